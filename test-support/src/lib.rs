//! What every test of the workspace shares, the aggregator's own tests and the end-to-end
//! harness alike: polling with a deadline, free ports, stopping processes as Kubernetes does,
//! reading counters back from a Prometheus text exposition, and the series that the shipped
//! alert rules and dashboard query.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How often [`wait_for`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Calls `check` until it returns `Ok`, at most for `timeout`. `Err` means "not yet" and says
/// what was seen; the last one is in the error if the time runs out.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Result<T, String>) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what} did not happen within {timeout:?}; last seen: {last}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A path inside the repository: the checkout cargo runs the test from (`CARGO_MANIFEST_DIR` at
/// run time, every crate's folder being at the top), not the one a shared build cache compiled it in.
pub fn repo_path(relative: &str) -> std::path::PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    std::path::Path::new(&crate_dir).join("..").join(relative)
}

/// GET `url` with curl (`scripts/dev-env` makes sure it is there): the HTTP status (0 when
/// nothing answered) and the body.
pub fn http_get(url: &str) -> (u16, String) {
    let output = std::process::Command::new("curl").args(["-s", "-w", "\n%{http_code}", url]).output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.parse().unwrap_or(0), body.to_owned())
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Stops a process as Kubernetes does: SIGTERM, then SIGKILL after `grace`. Returns its exit
/// status when it stopped on SIGTERM.
pub async fn terminate(child: &mut tokio::process::Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    }
}

/// The series of one counter in a Prometheus text exposition: labels and value, e.g. for
/// `metrics_pipeline_operator_aws_calls_total{service="Kinesis",operation="ListShards"} 3`.
pub fn counter_series(exposition: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| {
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| pair.split_once("=\""))
                .map(|(key, value)| (key.to_owned(), value.trim_end_matches('"').to_owned()))
                .collect();
            Some((labels, value.split(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// Every series of a text exposition as Prometheus names them, from its `# TYPE` lines: counters
/// with `_total`, histograms with `_bucket`, `_sum` and `_count` (and the family's name), infos
/// with `_info`.
pub fn exposed_series(exposition: &str) -> BTreeSet<String> {
    let mut series = BTreeSet::new();
    for (name, kind) in exposition.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' ')) {
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        series.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
        // A histogram goes by its family's name in prose; a counter's must end in `_total`.
        if kind == "histogram" {
            series.insert(name.to_owned());
        }
    }
    series
}

/// The series named `<prefix>…` anywhere in the alert rules and the dashboard the chart ships
/// (their queries, and the text that explains them), for a program to check against what it
/// exposes.
pub fn shipped_queries_of(prefix: &str) -> BTreeSet<String> {
    let chart = repo_path("charts/metrics-pipeline-operator");
    let shipped: String = ["rules/alerts.yaml", "dashboards/metrics-pipeline.json"]
        .iter()
        .map(|file| std::fs::read_to_string(chart.join(file)).unwrap_or_else(|error| panic!("{file}: {error}")))
        .collect();
    shipped.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|name| name.starts_with(prefix)).map(str::to_owned).collect()
}

/// One of the programs `scripts/aws-identities` made an IAM user for in the emulator, holding the
/// policy the chart ships for it (charts/metrics-pipeline-operator/iam/).
#[derive(Clone, Copy, Debug)]
pub enum Identity {
    Operator,
    Aggregator,
}

impl Identity {
    /// The program's credentials as environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`), from `METRICS_PIPELINE_<PROGRAM>_AWS_…` in the environment that
    /// `scripts/dev-env` wrote; `None` when IAM is off there (the program then shares the tests'
    /// credentials).
    pub fn env(self) -> Option<[(&'static str, String); 2]> {
        let program = match self {
            Identity::Operator => "OPERATOR",
            Identity::Aggregator => "AGGREGATOR",
        };
        let var = |name: &str| std::env::var(format!("METRICS_PIPELINE_{program}_{name}")).ok();
        Some([("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID")?), ("AWS_SECRET_ACCESS_KEY", var("AWS_SECRET_ACCESS_KEY")?)])
    }

    /// The program's credentials, or the tests' own when IAM is off.
    pub fn env_or_tests(self) -> [(&'static str, String); 2] {
        self.env()
            .unwrap_or_else(|| ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].map(|name| (name, std::env::var(name).unwrap_or_default())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_back_with_their_labels() {
        let text = "# HELP x_total calls\n# TYPE x_total counter\nx_total{service=\"Glue\",operation=\"GetTable\"} 2\nx_total{service=\"S3\",operation=\"HeadBucket\"} 1\nx_totally 9\ny_total 4\n";
        let series = counter_series(text, "x_total");
        assert_eq!(series.len(), 2);
        assert_eq!((series[0].0["service"].as_str(), series[0].0["operation"].as_str(), series[0].1), ("Glue", "GetTable", 2.0));
        assert_eq!(counter_series(text, "y_total"), [(BTreeMap::new(), 4.0)]);
    }

    #[tokio::test]
    async fn waiting_gives_up_with_what_was_seen_last() {
        let mut tries = 0;
        let error = wait_for("the impossible", Duration::from_millis(300), async || {
            tries += 1;
            Err::<(), _>(format!("try {tries}"))
        })
        .await
        .unwrap_err();
        assert!(error.to_string().starts_with("the impossible did not happen within 300ms; last seen: try "), "{error}");
        assert!(tries >= 2);
        assert_eq!(wait_for("at once", Duration::ZERO, async || Ok::<_, String>(7)).await.unwrap(), 7);
    }
}
