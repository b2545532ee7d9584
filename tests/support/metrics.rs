//! Reading veer's /metrics text (Prometheus exposition) in tests.

/// The samples of metric `name` whose labels include every one of `labels` (like
/// `route="web"`): their values.
fn samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [&'a str],
) -> impl Iterator<Item = f64> + 'a {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(move |l| l.starts_with(&prefix))
        .filter(move |l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

/// The value of the first /metrics sample `name` whose labels include every one of `labels`
/// (like `route="web"`); `None` if there is none.
pub fn metric_sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    samples(text, name, labels).next()
}

/// The sum of the /metrics samples `name` whose labels include every one of `labels`
/// (0 when there are none).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    samples(text, name, labels).sum()
}
