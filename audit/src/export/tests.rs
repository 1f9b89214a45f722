use super::*;
use crate::fixture::{allowed, by, in_repo};
use crate::reader::{Position, RawRecord};

fn raw(record: Record) -> RawRecord {
    RawRecord {
        start: Position::default(),
        end: Position::default(),
        line: serde_json::to_string(&record).unwrap(),
        record,
    }
}

#[test]
fn jsonl_is_the_journal_line() {
    let r = raw(allowed(Some("github.com"), "198.51.100.1:443"));
    let mut w = Writer::new(Format::Jsonl, Vec::new()).unwrap();
    w.write(&r).unwrap();
    let out = w.finish().unwrap();
    assert_eq!(out, format!("{}\n", r.line).into_bytes());
}

#[test]
fn csv_has_a_header_and_quotes_what_needs_it() {
    let mut rec = in_repo(
        by(allowed(Some("github.com"), "198.51.100.1:443"), "c,u\"rl"),
        "acme/web",
    );
    rec.ts = "2026-11-26T21:58:13.123456Z".parse().unwrap();
    rec.id = "01JDQ6Z3K4ZV9Y8X7W6V5T4S3R".parse().unwrap();
    rec.detail = Some("two\nlines".into());
    let mut w = Writer::new(Format::Csv, Vec::new()).unwrap();
    w.write(&raw(rec)).unwrap();
    let out = String::from_utf8(w.finish().unwrap()).unwrap();
    let mut lines = out.splitn(2, '\n');
    assert_eq!(lines.next().unwrap(), CSV_COLUMNS.join(","));
    assert_eq!(
        lines.next().unwrap(),
        "1,01JDQ6Z3K4ZV9Y8X7W6V5T4S3R,2026-11-26T21:58:13.123456Z,runner-1,acme/web,,,,,tcp,allow,,rule_allow,allow[0],github.com,sni,198.51.100.1:443,10.1.0.2:40000,4242,\"c,u\"\"rl\",,,,,,,\"two\nlines\",,,\n"
    );
}

#[test]
fn csv_has_the_port_asked_for_in_its_last_column() {
    let mut rec = allowed(Some("n0.many.test"), "198.51.100.1:443");
    rec.set_destination(None, 443);
    let mut w = Writer::new(Format::Csv, Vec::new()).unwrap();
    w.write(&raw(rec)).unwrap();
    let out = String::from_utf8(w.finish().unwrap()).unwrap();
    let row = out.lines().nth(1).unwrap();
    assert!(row.ends_with(",443,,"), "{row}");
    assert_eq!(CSV_COLUMNS[27..], ["port", "count", "samples"]);
}

#[test]
fn a_counted_record_has_its_count_and_samples_in_the_last_columns() {
    let mut rec = allowed(Some("evil.example"), "198.51.100.1:443");
    rec.count = Some(480);
    rec.samples = Some(vec!["a.evil.example".into(), "b.evil.example".into()]);
    let row = csv_row(&rec);
    assert_eq!(row[28..], ["480", "a.evil.example b.evil.example"]);
}

#[test]
fn write_record_and_take_give_the_bytes_of_write_and_finish() {
    let mut recs = vec![
        allowed(Some("github.com"), "198.51.100.1:443"),
        in_repo(
            by(allowed(Some("a,\"b\""), "[2001:db8::1]:443"), "c,u\"rl"),
            "o/r",
        ),
    ];
    recs[1].detail = Some("two\nlines\t\u{1}".into());
    for format in [Format::Jsonl, Format::Csv] {
        let mut whole = Writer::new(format, Vec::new()).unwrap();
        for r in &recs {
            whole.write(&raw(r.clone())).unwrap();
        }
        let whole = whole.finish().unwrap();
        // One chunk per record, as the service streams.
        let mut chunked = Writer::new(format, Vec::new()).unwrap();
        let mut got = chunked.take().unwrap();
        for r in &recs {
            chunked.write_record(r).unwrap();
            got.extend(chunked.take().unwrap());
        }
        got.extend(chunked.finish().unwrap());
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(whole).unwrap(),
            "{format:?}"
        );
    }
}
