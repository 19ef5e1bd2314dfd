//! Checks every store applies to an append batch before writing anything, so a refused batch
//! leaves no partial trace (the "all or nothing" of [`super::SessionStore::append`]).

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
