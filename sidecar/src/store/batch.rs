//! Checks every store applies to an append batch before writing anything, so a refused batch
//! leaves no partial trace (the "all or nothing" of [`super::SessionStore::append`]), and the
//! rule that makes a retried batch harmless (its already-stored prefix is skipped).

use super::{Recorded, Seq, StoreError, StoreResult};

/// The batch's seqs must be strictly increasing and above `last_stored` (the newest seq already
/// in the history, if any). A violation is a caller bug or a foreign writer; it is reported as
/// `Malformed` because nothing in the protocol can produce it legitimately.
pub(crate) fn check_order(last_stored: Option<Seq>, entries: &[Recorded]) -> StoreResult<()> {
    let mut prev = last_stored;
    for r in entries {
        if r.seq == 0 {
            return Err(StoreError::Malformed(
                "append: seq 0 is not a position".into(),
            ));
        }
        if let Some(p) = prev
            && r.seq <= p
        {
            return Err(StoreError::Malformed(format!(
                "append: seq {} is not above {p} (seqs must strictly increase)",
                r.seq
            )));
        }
        prev = Some(r.seq);
    }
    Ok(())
}

/// The part of `entries` that is not stored yet. A write that timed out may still have been
/// applied; its retry resends those entries with newer ones, so the prefix at or below
/// `last_stored` is skipped rather than refusing the batch and losing the new entries. Only the
/// session's current owner gets this far (the epoch check comes first), and it numbers every
/// entry once, so a stored seq is the very entry being resent.
pub(crate) fn unstored(last_stored: Option<Seq>, entries: &[Recorded]) -> StoreResult<&[Recorded]> {
    check_order(None, entries)?;
    let skip = last_stored.map_or(0, |last| entries.partition_point(|r| r.seq <= last));
    Ok(&entries[skip..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Entry;

    fn at(seq: Seq) -> Recorded {
        Recorded {
            seq,
            entry: Entry::End,
        }
    }

    #[test]
    fn accepts_increasing_batches_above_the_stored_tail() {
        assert!(check_order(None, &[at(1), at(2), at(5)]).is_ok());
        assert!(check_order(Some(5), &[at(6)]).is_ok());
        assert!(check_order(Some(5), &[]).is_ok());
    }

    #[test]
    fn a_resent_prefix_is_skipped_and_the_rest_kept() {
        let batch = [at(4), at(5), at(6), at(7)];
        let seqs = |r: &[Recorded]| r.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(unstored(Some(5), &batch).unwrap()), [6, 7]);
        assert_eq!(seqs(unstored(Some(7), &batch).unwrap()), Vec::<Seq>::new());
        assert_eq!(seqs(unstored(Some(1), &batch).unwrap()), [4, 5, 6, 7]);
        assert_eq!(seqs(unstored(None, &batch).unwrap()), [4, 5, 6, 7]);
        assert!(
            unstored(Some(5), &[at(6), at(6)]).is_err(),
            "still refuses a non-increasing batch"
        );
    }

    #[test]
    fn refuses_replays_reorders_and_seq_zero() {
        for (last, batch) in [
            (Some(5), vec![at(5)]),
            (Some(5), vec![at(3)]),
            (None, vec![at(2), at(2)]),
            (None, vec![at(3), at(2)]),
            (None, vec![at(0)]),
        ] {
            assert!(
                matches!(check_order(last, &batch), Err(StoreError::Malformed(_))),
                "{last:?} {batch:?}"
            );
        }
    }
}
