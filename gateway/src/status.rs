//! The status page of the admin listener (`GET /status`): the gateway's
//! state at a glance, as HTML (no script, readable on a phone) or as JSON
//! for `Accept: application/json`. The edge gathers a [`Status`] from the
//! generation in force; everything here is plain values.

use serde::Serialize;
use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;

/// Reloads remembered for the page.
pub const RECENT_RELOADS: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// How many route tables this process has loaded (1: the first).
    pub generation: u64,
    /// When the table in force was loaded (RFC 3339).
    pub loaded_at: String,
    pub routes: Vec<RouteRow>,
    pub upstreams: Vec<UpstreamRow>,
    pub verdict_cache: CacheRow,
    pub revocations: RevocationRow,
    pub traces: TracesRow,
    /// Newest first.
    pub reloads: Vec<Reload>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteRow {
    pub prefix: String,
    pub hosts: Vec<String>,
    pub methods: Vec<String>,
    pub access: &'static str,
    pub roles: Vec<String>,
    /// The upstream, or what the gateway answers itself (`redirect`,
    /// `respond`).
    pub target: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamRow {
    pub name: String,
    pub healthy: usize,
    pub servers: Vec<ServerRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerRow {
    pub address: String,
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheRow {
    /// Verdicts held (approximate).
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    /// Hits over lookups since start; none before the first lookup.
    pub hit_ratio: Option<f64>,
}

impl CacheRow {
    pub fn new(entries: u64, hits: u64, misses: u64) -> Self {
        let lookups = hits + misses;
        CacheRow {
            entries,
            hits,
            misses,
            hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RevocationRow {
    /// `subscribed`, `down` (Redis configured, subscription not up) or
    /// `not configured`.
    pub redis: &'static str,
    /// Whether the admin listener takes revocations (always, here).
    pub admin_listener: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TracesRow {
    /// The collector's base URL; none when `tracing:` is absent.
    pub otlp_endpoint: Option<String>,
    pub sampling_ratio: Option<f64>,
    /// Spans the collector took, and spans lost, since start.
    pub exported: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reload {
    /// RFC 3339.
    pub at: String,
    pub trigger: String,
    /// `applied` or `rejected`.
    pub result: &'static str,
    /// Routes in force after it, or why it was refused.
    pub detail: String,
}

/// The last [`RECENT_RELOADS`] reloads.
#[derive(Default)]
pub struct Reloads {
    recent: Mutex<VecDeque<Reload>>,
}

impl Reloads {
    pub fn record(&self, reload: Reload) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_RELOADS {
            recent.pop_back();
        }
        recent.push_front(reload);
    }

    pub fn newest_first(&self) -> Vec<Reload> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), saying how
/// much was left out.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} more bytes)", &text[..end], text.len() - end)
}

/// `secs` since the epoch as RFC 3339 (UTC, whole seconds), in the log
/// lines' own spelling.
pub fn timestamp(secs: u64) -> String {
    format!("{}Z", contract::telemetry::date_time(secs))
}

/// Whether the client asked for JSON rather than the page: an `Accept`
/// naming `application/json` before (or without) `text/html`.
pub fn wants_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let position = |kind: &str| {
        accept
            .split(',')
            .position(|part| part.trim().to_ascii_lowercase().starts_with(kind))
    };
    match (position("application/json"), position("text/html")) {
        (Some(json), Some(html)) => json < html,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Text made safe inside HTML elements and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem;color:#1d232a;background:#fafbfc}\
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.4rem 0 .4rem}\
p.meta{color:#56606b;margin:0}section{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:.92rem;background:#fff}\
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #e3e7eb;vertical-align:top}\
th{background:#f0f3f6}.ok{color:#0a7d32;font-weight:600}.bad{color:#c0262d;font-weight:600}\
.cards{display:flex;flex-wrap:wrap;gap:.6rem}.card{background:#fff;border:1px solid #e3e7eb;\
border-radius:6px;padding:.5rem .8rem;min-width:9rem}.card b{display:block;font-size:1.3rem}";

/// "off", or the sampling ratio and where spans go.
fn traces_state(traces: &TracesRow) -> String {
    match (&traces.otlp_endpoint, traces.sampling_ratio) {
        (Some(endpoint), Some(ratio)) => {
            // 0.07 × 100 is 7.000000000000001 in binary floating point.
            let percent = (ratio * 100.0 * 1000.0).round() / 1000.0;
            format!("{percent} % to {endpoint}")
        }
        _ => "off".into(),
    }
}

/// The page: the same facts as the JSON, as tables.
pub fn html(status: &Status) -> String {
    let mut page = String::with_capacity(8 * 1024);
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Portcullis status</title><style>{STYLE}</style></head><body>\
         <h1>Portcullis status</h1><p class=\"meta\">Route table generation {} loaded {}</p>",
        status.generation,
        escape(&status.loaded_at)
    );
    let cache = &status.verdict_cache;
    let ratio = cache
        .hit_ratio
        .map_or_else(|| "–".to_string(), |r| format!("{:.1} %", r * 100.0));
    let (healthy, servers) = status
        .upstreams
        .iter()
        .fold((0, 0), |(h, n), u| (h + u.healthy, n + u.servers.len()));
    let redis_class = match status.revocations.redis {
        "subscribed" => "ok",
        "down" => "bad",
        _ => "",
    };
    let _ = write!(
        page,
        "<section class=\"cards\">\
         <div class=\"card\">Routes<b>{}</b></div>\
         <div class=\"card\">Healthy servers<b class=\"{}\">{healthy} / {servers}</b></div>\
         <div class=\"card\">Verdict cache<b>{}</b>{} hit ratio</div>\
         <div class=\"card\">Revocations (Redis)<b class=\"{redis_class}\">{}</b></div>\
         <div class=\"card\">Traces<b>{}</b>{}</div>\
         </section>",
        status.routes.len(),
        if healthy == servers { "ok" } else { "bad" },
        cache.entries,
        escape(&ratio),
        escape(status.revocations.redis),
        escape(&traces_state(&status.traces)),
        escape(&format!(
            "{} exported, {} lost",
            status.traces.exported, status.traces.dropped
        )),
    );

    page.push_str("<h2>Upstreams</h2><section><table><tr><th>Upstream</th><th>Server</th><th>Health</th></tr>");
    for upstream in &status.upstreams {
        for server in &upstream.servers {
            let (class, word) = if server.healthy {
                ("ok", "healthy")
            } else {
                ("bad", "unhealthy")
            };
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{word}</td></tr>",
                escape(&upstream.name),
                escape(&server.address)
            );
        }
    }
    page.push_str("</table></section>");

    page.push_str(
        "<h2>Routes</h2><section><table><tr><th>Prefix</th><th>Hosts</th><th>Methods</th>\
         <th>Access</th><th>To</th></tr>",
    );
    for route in &status.routes {
        let access = if route.roles.is_empty() {
            route.access.to_string()
        } else {
            format!("{} ({})", route.access, route.roles.join(", "))
        };
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&route.prefix),
            escape(&or_any(&route.hosts)),
            escape(&or_any(&route.methods)),
            escape(&access),
            escape(&route.target)
        );
    }
    page.push_str("</table></section>");

    let _ = write!(
        page,
        "<h2>Verdict cache</h2><section><table><tr><th>Entries</th><th>Hits</th><th>Misses</th>\
         <th>Hit ratio</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table></section>",
        cache.entries,
        cache.hits,
        cache.misses,
        escape(&ratio)
    );

    page.push_str("<h2>Recent reloads</h2><section><table><tr><th>At</th><th>Trigger</th><th>Result</th><th>Detail</th></tr>");
    if status.reloads.is_empty() {
        page.push_str("<tr><td colspan=\"4\">None since start.</td></tr>");
    }
    for reload in &status.reloads {
        let class = if reload.result == "applied" {
            "ok"
        } else {
            "bad"
        };
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            escape(&reload.at),
            escape(&reload.trigger),
            reload.result,
            escape(&reload.detail)
        );
    }
    page.push_str("</table></section></body></html>\n");
    page
}

fn or_any(list: &[String]) -> String {
    if list.is_empty() {
        "any".into()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            generation: 3,
            loaded_at: timestamp(1_796_520_000),
            routes: vec![RouteRow {
                prefix: "/api/<tasks>".into(),
                hosts: vec![],
                methods: vec!["GET".into()],
                access: "protected",
                roles: vec!["admin".into()],
                target: "tasks".into(),
            }],
            upstreams: vec![UpstreamRow {
                name: "tasks".into(),
                healthy: 1,
                servers: vec![
                    ServerRow {
                        address: "127.0.0.1:9101".into(),
                        healthy: true,
                    },
                    ServerRow {
                        address: "127.0.0.1:9102".into(),
                        healthy: false,
                    },
                ],
            }],
            verdict_cache: CacheRow::new(10, 3, 1),
            revocations: RevocationRow {
                redis: "down",
                admin_listener: true,
            },
            traces: TracesRow {
                otlp_endpoint: Some("http://collector:4318/<x>".into()),
                sampling_ratio: Some(0.01),
                exported: 5,
                dropped: 2,
            },
            reloads: vec![Reload {
                at: timestamp(0),
                trigger: "SIGHUP".into(),
                result: "rejected",
                detail: "routes[0].prefix: \"<script>\" must start with /".into(),
            }],
        }
    }

    #[test]
    fn the_page_escapes_everything_it_shows() {
        let page = html(&status());
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("/api/&lt;tasks&gt;"));
        assert!(page.contains("127.0.0.1:9102</td><td class=\"bad\">unhealthy"));
        assert!(page.contains("75.0 %"));
        assert!(page.contains("1 / 2"));
        assert!(
            page.contains("1 % to http://collector:4318/&lt;x&gt;"),
            "{page}"
        );
        assert!(page.contains("5 exported, 2 lost"));
        assert!(!page.contains("<script"), "no script at all");
    }

    #[test]
    fn json_only_when_asked_for_first() {
        let cases = [
            (None, false),
            (Some("text/html"), false),
            (Some("application/json"), true),
            (Some("Application/JSON; charset=utf-8"), true),
            (Some("text/html,application/json"), false),
            (Some("application/json, text/html"), true),
            (Some("*/*"), false),
        ];
        for (accept, json) in cases {
            assert_eq!(wants_json(accept), json, "{accept:?}");
        }
    }

    #[test]
    fn long_details_are_cut_on_a_character() {
        assert_eq!(bounded("short", 10), "short");
        let cut = bounded(&"é".repeat(10), 5);
        assert_eq!(cut, "éé … (16 more bytes)");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(1_796_520_000), "2026-12-06T01:20:00Z");
    }

    #[test]
    fn reloads_keep_the_newest() {
        let reloads = Reloads::default();
        for i in 0..(RECENT_RELOADS + 5) {
            reloads.record(Reload {
                at: timestamp(i as u64),
                trigger: format!("t{i}"),
                result: "applied",
                detail: String::new(),
            });
        }
        let kept = reloads.newest_first();
        assert_eq!(kept.len(), RECENT_RELOADS);
        assert_eq!(kept[0].trigger, format!("t{}", RECENT_RELOADS + 4));
    }
}
