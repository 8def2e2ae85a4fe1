//! Dashboards and alert rules only name metrics the binaries really export, every PromQL
//! expression parses (`promtool`), every alert has its runbook.

use crate::harness::{Options, Stack};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Metric names a `/metrics` text exposes (histograms with their series suffixes).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            names.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// `kurz_*` metric names mentioned in a text.
fn kurz_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("kurz_") {
        let start = i + pos;
        let boundary = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        if boundary {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Every `expr` of the dashboards.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let dash: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            for panel in dash["panels"].as_array().expect("panels") {
                for target in panel["targets"].as_array().expect("targets") {
                    let expr = target["expr"].as_str().expect("expr").to_owned();
                    out.push((format!("{} / {}", path.display(), panel["title"]), expr));
                }
            }
        }
    }
    out
}

#[test]
fn every_dashboard_expression_is_valid_promql() {
    let exprs = dashboard_exprs();
    assert!(
        exprs.len() >= 30,
        "dashboards have {} expressions",
        exprs.len()
    );
    // promtool parses expressions in rule files: wrap each as a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: kurz:dashboard_expr_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let file = std::env::temp_dir().join(format!("kurz-dash-rules-{}.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool must be installed");
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_alert_links_an_existing_runbook() {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules/kurz.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 13);
    for alert in alerts {
        let link = format!("runbook_url: docs/runbooks/{alert}.md");
        assert!(rules.contains(&link), "{alert} has no runbook_url");
        let book = std::fs::read_to_string(root().join(format!("docs/runbooks/{alert}.md")))
            .expect("runbook file");
        for part in ["**Symptom**", "**Impact**", "**Diagnosis**", "**Fix**"] {
            assert!(book.contains(part), "{alert}'s runbook lacks {part}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_name_only_exported_metrics() {
    let stack = Stack::start(Options::default());
    // Traffic through every path, so labelled series exist.
    let (_, code) = stack.link("https://example.com/obs").await;
    stack.get(&format!("/{code}")).await;
    stack.get("/NoSuchCode1").await;
    stack.get("/events").await;
    let mut names = BTreeSet::new();
    let admin_ports: Vec<u16> = std::iter::once(stack.admin_port)
        .chain(stack.upstreams.iter().map(|u| u.admin_port))
        .collect();
    for port in admin_ports {
        let text = stack
            .client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        names.extend(exported(&text));
    }
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules/kurz.yml")).unwrap();
    let code: Vec<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let mut referenced = kurz_names(&code.join("\n"));
    let mut charted = BTreeSet::new();
    for (_, expr) in dashboard_exprs() {
        charted.extend(kurz_names(&expr));
    }
    referenced.extend(charted.iter().cloned());
    assert!(referenced.len() >= 20, "{referenced:?}");
    let missing: Vec<&String> = referenced.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named in dashboards/rules but not exported: {missing:?}"
    );
    // And the other way: what the binaries export is on a dashboard, a histogram by any of its
    // series (an alert's metric too: the person paged looks at its graph first).
    let uncharted: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("kurz_"))
        .filter(|n| {
            !["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| n.strip_suffix(s).is_some_and(|base| names.contains(base)))
        })
        .filter(|n| {
            !["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|s| charted.contains(&format!("{n}{s}")))
        })
        .collect();
    assert!(
        uncharted.is_empty(),
        "exported but on no dashboard: {uncharted:?}"
    );
}

#[test]
fn metric_name_extraction_finds_whole_names_only() {
    let names = kurz_names("sum(rate(kurz_proxy_requests_total{x=\"y\"}[5m])) / kurz:dashboard_expr_1 + kurz_api_x_bucket");
    assert_eq!(
        names,
        BTreeSet::from([
            "kurz_proxy_requests_total".to_owned(),
            "kurz_api_x_bucket".to_owned()
        ])
    );
}

/// The access log (on by default, `log.access_log_sample_rate: 1.0`) has one line for every
/// request the edge answered, and still has each of them once the edge has drained and exited:
/// lines are written by a thread of their own, not by the request (docs/operations.md, "Logs").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_in_the_access_log_after_a_graceful_exit() {
    let mut stack = Stack::start(Options {
        log_level: "info",
        ..Options::default()
    });
    let (_, code) = stack.link("https://example.com/logged").await;
    let path = format!("/{code}");
    const REQUESTS: usize = 50;
    for _ in 0..REQUESTS {
        let res = stack.client.get(stack.url(&path)).send().await.unwrap();
        assert_eq!(res.status(), 302);
    }
    stack.signal_proxy("TERM");
    let exited = tokio::task::spawn_blocking(move || {
        (stack.wait_proxy_exit(Duration::from_secs(60)), stack)
    })
    .await
    .unwrap();
    let (clean, stack) = exited;
    assert!(clean, "the proxy exits cleanly");
    let log = stack.proxy_log();
    let mut ids = BTreeSet::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["logger"] == "kurz_proxy::access" && v["path"] == path.as_str() {
            assert_eq!(v["status"], 302, "{line}");
            assert!(
                ids.insert(v["request_id"].as_str().unwrap().to_owned()),
                "{line}"
            );
        }
    }
    assert_eq!(ids.len(), REQUESTS, "{log}");
}

/// A request the edge could not proxy is logged once, by the edge's access line, under its
/// request id and at `warn` (so a `warn`-level log keeps it); Pingora's own free-text error
/// line, which carries no id, is not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_is_logged_with_its_id_and_not_twice() {
    let mut stack = Stack::start(Options {
        upstreams: 1,
        log_level: "warn",
        ..Options::default()
    });
    stack.upstreams[0].kill();
    let res = reqwest::Client::new()
        .get(stack.url("/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        if let Some(line) = stack.proxy_log().lines().find(|l| l.contains(&id)) {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failed request's id is not in the log: {}",
            stack.proxy_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line.contains("\"status\":502"), "{line}");
    assert!(line.contains("\"level\":\"WARN\""), "{line}");
    assert!(
        !stack.proxy_log().contains("Fail to proxy"),
        "{}",
        stack.proxy_log()
    );
}
