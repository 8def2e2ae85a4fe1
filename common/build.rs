//! Stamps the git commit into the build (`kurz_common::GIT_SHA`) for the build-info metrics.

fn main() {
    // A build without the repository (an image built from a context without `.git`) is given
    // the commit in `KURZ_GIT_SHA`.
    let given = std::env::var("KURZ_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let sha = given
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
        })
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KURZ_GIT_SHA={sha}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    println!("cargo:rerun-if-env-changed=KURZ_GIT_SHA");
}
