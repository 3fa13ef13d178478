//! Harnesses shared by the unit tests and the fuzz targets (feature `testing`).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::directory::{Policy, UserConn, UserDirectory};
use super::ids::ConnId;
use super::index::{Change, ChannelIndex};

/// The shard-local channel index and the home shard's user directory, driven by arbitrary
/// operations (three bytes each) and checked against plain models.
pub fn check_index(data: &[u8]) {
    let names: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("n{i}"))).collect();
    let mut index = ChannelIndex::default();
    let mut model: BTreeSet<(usize, u32)> = BTreeSet::new();
    let mut users = UserDirectory::default();
    let mut user_model: BTreeSet<(usize, u32)> = BTreeSet::new();
    for op in data.chunks_exact(3) {
        let (kind, name, slot) = (op[0] % 6, usize::from(op[1] % 4), u32::from(op[2] % 8));
        let n = &names[name];
        let id = ConnId { shard: 0, slot, gen: 1 };
        match kind {
            0 => {
                assert_eq!(index.subscribe(n, slot) == Change::Changed, model.insert((name, slot)))
            }
            1 => assert_eq!(
                index.unsubscribe(n, slot) == Change::Changed,
                model.remove(&(name, slot))
            ),
            2 => {
                let device = Some(Arc::from(format!("d{}", slot % 3)));
                users.join(
                    n,
                    UserConn {
                        conn: id,
                        device,
                        connected_ms: 0,
                        active_ms: u64::from(op[2]),
                        info: None,
                    },
                    false,
                );
                user_model.insert((name, slot));
            }
            3 => {
                users.leave(n, id);
                user_model.remove(&(name, slot));
            }
            4 => users.active(n, id, u64::from(op[2]) * 10),
            _ => {
                let want = user_model.iter().filter(|(u, _)| *u == name).count();
                let got = users.targets(n, None, Policy::All, 0, 0).map_or(0, |c| c.len());
                assert_eq!(got, want);
                let one = users.targets(n, None, Policy::One, 0, 0).map_or(0, |c| c.len());
                assert_eq!(one, usize::from(want > 0));
            }
        }
        let count = model.iter().filter(|(c, _)| *c == name).count();
        assert_eq!(index.count(n), count);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_index_check_holds_on_random_operations(ops in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::check_index(&ops);
        }
    }
}
