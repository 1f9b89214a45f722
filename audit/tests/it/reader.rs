//! The reader's torn-line rule, checked on hand-made segment files: an
//! incomplete last line of the newest segment is waited for, one in an older
//! segment is skipped, and neither is ever returned as a record.

use std::io::Write;
use std::path::Path;

use egressd_audit::reader::{self, Position, ReadError};
use egressd_audit::segment;

use crate::records::{number_of, numbered};

fn line(n: u64) -> String {
    format!("{}\n", serde_json::to_string(&numbered(n)).unwrap())
}

fn append(dir: &Path, seq: u64, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment::path(dir, seq))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn an_incomplete_line_in_the_newest_segment_is_read_once_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let full = line(2);
    let (head, tail) = full.split_at(40);
    append(tmp.path(), 1, &line(1));
    append(tmp.path(), 1, head);

    let got: Vec<_> = reader::read_from(tmp.path(), Position::default())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(number_of(&got[0].1), Some(1));
    let checkpoint = got[0].0;
    assert_eq!(
        checkpoint,
        Position {
            segment: 1,
            offset: line(1).len() as u64
        }
    );

    append(tmp.path(), 1, tail);
    let rest: Vec<_> = reader::read_from(tmp.path(), checkpoint)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(rest.len(), 1);
    assert_eq!(number_of(&rest[0].1), Some(2));
    assert_eq!(rest[0].0.offset, (line(1).len() + full.len()) as u64);
}

#[test]
fn a_torn_line_in_an_older_segment_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    append(tmp.path(), 1, &line(1));
    append(tmp.path(), 1, &line(2)[..30]);
    append(tmp.path(), 2, &line(3));
    let nums: Vec<_> = reader::read_dir(tmp.path())
        .unwrap()
        .map(|r| number_of(&r.unwrap()).unwrap())
        .collect();
    assert_eq!(nums, [1, 3]);
}

#[test]
fn a_corrupt_complete_line_is_an_error_and_reading_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    append(tmp.path(), 1, &line(1));
    append(tmp.path(), 1, "\0\0\0garbage\n");
    append(tmp.path(), 1, &line(2));
    let items: Vec<_> = reader::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(items.len(), 3);
    assert_eq!(number_of(items[0].as_ref().unwrap()), Some(1));
    match &items[1] {
        Err(ReadError::Corrupt { offset, .. }) => assert_eq!(*offset, line(1).len() as u64),
        other => panic!("{other:?}"),
    }
    assert_eq!(number_of(items[2].as_ref().unwrap()), Some(2));
}

#[test]
fn a_checkpoint_in_a_removed_segment_continues_with_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    append(tmp.path(), 5, &line(5));
    append(tmp.path(), 6, &line(6));
    let nums: Vec<_> = reader::read_from(
        tmp.path(),
        Position {
            segment: 3,
            offset: 999,
        },
    )
    .unwrap()
    .map(|r| number_of(&r.unwrap().1).unwrap())
    .collect();
    assert_eq!(nums, [5, 6]);
    let after: Vec<_> = reader::read_from(
        tmp.path(),
        Position {
            segment: 6,
            offset: line(6).len() as u64,
        },
    )
    .unwrap()
    .collect();
    assert!(after.is_empty());
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = reader::read_dir(&tmp.path().join("nope")).err().unwrap();
    assert!(
        err.to_string().contains("cannot read the audit journal"),
        "{err}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// A segment cut at any byte (a crash mid-write) yields exactly the
    /// records whose line was complete, whether or not a newer segment exists.
    #[test]
    fn a_segment_cut_anywhere_yields_exactly_its_complete_lines(
        count in 1u64..20,
        cut_permille in 0u64..=1000,
        sealed in proptest::bool::ANY,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..count).map(line).collect();
        let text = lines.concat();
        let cut = (text.len() as u64 * cut_permille / 1000) as usize;
        append(tmp.path(), 1, &text[..cut]);
        if sealed {
            append(tmp.path(), 2, &line(1000));
        }
        let mut want: Vec<u64> = Vec::new();
        let mut end = 0;
        for (n, l) in lines.iter().enumerate() {
            end += l.len();
            if end <= cut {
                want.push(n as u64);
            }
        }
        if sealed {
            want.push(1000);
        }
        let got: Vec<u64> = reader::read_dir(tmp.path())
            .unwrap()
            .map(|r| number_of(&r.unwrap()).unwrap())
            .collect();
        proptest::prop_assert_eq!(got, want);
    }
}
