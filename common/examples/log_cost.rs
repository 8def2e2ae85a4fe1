//! What one access-log line costs the process: logs LINES lines shaped like the edge's access
//! log (`proxy/src/service/mod.rs`, `logging`) from one thread, then reports the CPU the whole
//! process spent (the logging thread, and the log's writer thread where there is one) per line.
//!
//! ```sh
//! cargo run --release -p kurz-common --example log_cost -- 1000000 2>/tmp/lines.log
//! ```
//!
//! Send stderr to a file or a pipe that is read: on a terminal this measures the terminal.

fn cpu_seconds() -> f64 {
    // utime and stime of all the process's threads, in clock ticks (USER_HZ, 100 on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = &stat[stat
        .rfind(')')
        .expect("stat has the command in parentheses")
        + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn main() {
    let lines: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().expect("LINES is a number"));
    kurz_common::logging::init("kurz-proxy", "info");
    let (cpu0, wall0) = (cpu_seconds(), std::time::Instant::now());
    for i in 0..lines {
        let client = std::net::IpAddr::from([192, 0, 2, (i % 250) as u8]);
        log::info!(
            target: "kurz_proxy::access",
            request_id = "0193a1b2c3d4e5f6a7b8c9d0", method = "GET", path = "/abc123",
            class = "redirect", status = 302u16, duration_ms = 0.187, client = client.to_string(),
            edge = true, error = "";
            "request"
        );
    }
    log::logger().flush();
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    println!(
        "{lines} lines: {:.2} µs of CPU per line, {:.2} µs of wall time per line",
        cpu * 1e6 / lines as f64,
        wall * 1e6 / lines as f64
    );
}
