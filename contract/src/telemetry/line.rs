//! The access log's text lines, written as `tracing-subscriber`'s default
//! format writes them (`2026-12-05T04:08:03.631488Z  INFO access:
//! request_id=… path="/api/x" status=200 …`), byte for byte, but cheaper:
//! a string that needs no escaping is copied between quotes instead of
//! going through `Debug` one character at a time, and the date and time of
//! the current second are formatted once per thread, not on every line.

use std::cell::RefCell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format of the access log's text lines.
pub struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        timestamp(&mut writer, SystemTime::now())?;
        let meta = event.metadata();
        write!(writer, " {:>5} {}:", meta.level(), meta.target())?;
        let mut fields = Fields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = if field.name() == "message" {
            self.writer
                .write_char(' ')
                .and_then(|()| value(self.writer))
        } else {
            write!(self.writer, " {}=", field.name()).and_then(|()| value(self.writer))
        };
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field(field, |w| w.write_str(value));
        } else {
            self.field(field, |w| quoted(w, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, |w| write!(w, "{value:?}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| write!(w, "{value:?}"));
    }
}

/// `value` as `Debug` writes a string: between quotes, escaped. Printable
/// ASCII other than `"` and `\` needs no escape, and is copied as it is.
fn quoted(w: &mut Writer<'_>, value: &str) -> fmt::Result {
    let plain = value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        w.write_char('"')?;
        w.write_str(value)?;
        w.write_char('"')
    } else {
        write!(w, "{value:?}")
    }
}

thread_local! {
    /// The current second, and its date and time as written.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 in UTC with microseconds, as the default format writes it.
fn timestamp(w: &mut Writer<'_>, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            cached.1 = date_time(second);
            cached.0 = second;
        }
        write!(w, "{}.{:06}Z", cached.1, since.subsec_micros())
    })
}

/// `YYYY-MM-DDTHH:MM:SS` for a Unix time in seconds (UTC).
pub fn date_time(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(i64::MAX / 2);
    let rest = unix % 86_400;
    // Days to a civil date (proleptic Gregorian), era by era of 400 years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn dates_and_times_of_known_instants() {
        for (unix, expected) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_796_441_283, "2026-12-05T03:28:03"),
            (4_107_542_399, "2100-02-28T23:59:59"),
            (4_107_542_400, "2100-03-01T00:00:00"),
        ] {
            assert_eq!(date_time(unix), expected, "{unix}");
        }
    }

    /// A writer that keeps what both formats wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Without its timestamp: the two formats read the clock separately.
    fn after_timestamp(line: &str) -> &str {
        line.split_once('Z').map_or("", |(_, rest)| rest)
    }

    #[test]
    fn lines_are_the_default_format_byte_for_byte() {
        let ours = Captured::default();
        let theirs = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .event_format(Line)
                    .with_writer({
                        let ours = ours.clone();
                        move || ours.clone()
                    }),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer({
                        let theirs = theirs.clone();
                        move || theirs.clone()
                    }),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "access",
                request_id = %"abc-1",
                method = %"GET",
                path = "/api/tasks/1",
                route = "/api/tasks",
                status = 200u16,
                upstream = "tasks",
                user_id = "",
                quoted = "a \"b\" \\ c\té",
                stale = false,
                duration_ms = 1.25f64,
                signed = -3i64,
            );
            tracing::warn!(target: "access", answer = 42u64, "a message first");
        });
        let ours = String::from_utf8(ours.0.lock().unwrap().clone()).unwrap();
        let theirs = String::from_utf8(theirs.0.lock().unwrap().clone()).unwrap();
        let (ours, theirs): (Vec<&str>, Vec<&str>) =
            (ours.lines().collect(), theirs.lines().collect());
        assert_eq!(ours.len(), 2);
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(after_timestamp(a), after_timestamp(b));
            // The timestamp has the default's shape: date, time, microseconds.
            let stamp = a.split_once('Z').map_or("", |(s, _)| s);
            assert_eq!(stamp.len(), "2026-12-05T04:08:03.631488".len(), "{a}");
        }
        assert!(
            ours[0].contains(r#"quoted="a \"b\" \\ c\té""#),
            "{}",
            ours[0]
        );
    }

    #[test]
    fn the_timestamp_is_the_instant_given() {
        let mut out = String::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_796_441_283_631_488);
        timestamp(&mut Writer::new(&mut out), at).unwrap();
        assert_eq!(out, "2026-12-05T03:28:03.631488Z");
        // The same second again, from the thread's cache.
        out.clear();
        let later = UNIX_EPOCH + Duration::from_micros(1_796_441_283_900_001);
        timestamp(&mut Writer::new(&mut out), later).unwrap();
        assert_eq!(out, "2026-12-05T03:28:03.900001Z");
    }
}
