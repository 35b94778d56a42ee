//! The pure scheduling core of one download: which chunk goes to which peer next.
//! No I/O: workers feed it events (a job ended, a peer failed, a holder appeared) and
//! ask it for the next job, so every decision is tested step by step below.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use crate::addr::PeerAddr;
use crate::ids::FragmentIndex;
use crate::manifest::Manifest;

use super::FetchError;

/// Priority classes: lower goes first.
pub mod priority {
    /// A player is waiting for these bytes: deadline-first, ahead of everything else.
    pub const URGENT: u8 = 0;
    /// The first and the last fragment: a player needs the container's header and
    /// index (often at the end) before it can play anything.
    pub const EARLY: u8 = 1;
    /// Background download, rarest first.
    pub const NORMAL: u8 = 2;
}

/// A chunk: (fragment, chunk within the fragment).
pub(super) type Item = (FragmentIndex, u32);
/// Heap order: (class, rank, fragment, chunk). The rank is the deadline order for
/// URGENT, 0 for EARLY and the number of holders (rarity) for NORMAL.
pub(super) type Key = (u8, u64, FragmentIndex, u32);

/// The chunks of `manifest` that bytes `offset..offset+len` of the whole file touch.
pub(super) fn covering(manifest: &Manifest, offset: u64, len: u64) -> Vec<Item> {
    let end = offset.saturating_add(len).min(manifest.size);
    let mut out = Vec::new();
    if offset >= end {
        return out;
    }
    let cs = manifest.chunk_size as u64;
    let first = manifest
        .fragments
        .partition_point(|f| f.offset + f.size <= offset);
    for f in &manifest.fragments[first..] {
        if f.offset >= end {
            break;
        }
        let from = offset.saturating_sub(f.offset) / cs;
        let to = (end.min(f.offset + f.size) - f.offset - 1) / cs;
        out.extend((from..=to).map(|c| (f.index, c as u32)));
    }
    out
}

pub(super) struct PeerState {
    pub(super) addr: PeerAddr,
    /// Whole fragments it holds.
    pub(super) holds: HashSet<FragmentIndex>,
    /// Single verified chunks it holds (of fragments it does not hold whole), as its
    /// watch reports them.
    pub(super) chunks: HashSet<Item>,
    pub(super) in_flight: usize,
    pub(super) urgent_in_flight: usize,
    pub(super) failures: u32,
    pub(super) banned: bool,
    pub(super) dead: bool,
}

/// The shared scheduling state of one download.
///
/// The heap may hold stale entries (an item re-queued with another priority): an entry
/// counts only if it equals the item's key in `queued`.
pub(super) struct Sched {
    pub(super) heap: BinaryHeap<Reverse<Key>>,
    /// Items waiting in the heap, with their live key.
    pub(super) queued: HashMap<Item, Key>,
    pub(super) urgent_queued: usize,
    pub(super) urgent_in_flight: usize,
    /// Items with a class above NORMAL: (class, rank).
    pub(super) boost: HashMap<Item, (u8, u64)>,
    /// Fragments whose chunks are EARLY when nothing asks for them more urgently.
    pub(super) early: HashSet<FragmentIndex>,
    /// Items not verified yet: queued, in flight or stalled.
    pub(super) pending: HashSet<Item>,
    pub(super) next_rank: u64,
    /// Urgent requests in flight to one peer.
    pub(super) urgent_per_peer: usize,
    /// Items no live peer holds; retried after a refresh.
    pub(super) stalled: Vec<Item>,
    pub(super) in_flight: usize,
    pub(super) peers: Vec<PeerState>,
    pub(super) excluded: HashMap<Item, HashSet<usize>>,
    pub(super) left: HashMap<FragmentIndex, u32>,
    pub(super) sources: HashMap<FragmentIndex, BTreeSet<usize>>,
    pub(super) rounds: u32,
    pub(super) refreshing: bool,
    pub(super) last_error: Option<String>,
    pub(super) bytes: u64,
    pub(super) done: Vec<(FragmentIndex, Vec<PeerAddr>)>,
    pub(super) fatal: Option<FetchError>,
    /// The workers are gone: nothing queued now would be fetched.
    pub(super) finished: bool,
    /// Workers still running; the last one to find nothing left marks `finished`, under
    /// the same lock, so fragments added to a running download are never dropped.
    pub(super) alive: usize,
    /// Fragments this download was asked for (they grow while it runs).
    pub(super) wanted: BTreeSet<FragmentIndex>,
    /// Fragments in the video (0: unknown): a peer holding all of them is a seeder,
    /// asked only for what no other peer can give.
    pub(super) fragment_count: u32,
    /// Break ties between equally rare chunks at random, so leechers that see the same
    /// availability ask for different chunks.
    pub(super) shuffle: bool,
    /// This node holds nothing yet: pick at random rather than rarest first, so it has
    /// something to trade as soon as possible (BitTorrent's random first piece).
    pub(super) random_first: bool,
    /// Chunks verified by this download.
    pub(super) verified: u64,
    /// The node's bans: a peer banned by any download joins this one banned.
    pub(super) bans: Option<std::sync::Arc<super::Bans>>,
}

/// Chunks a node fetches at random before it switches to rarest first.
pub(super) const RANDOM_FIRST_CHUNKS: u64 = 4;

impl PeerState {
    /// Whether it holds `item` (its whole fragment, or the chunk alone).
    pub(super) fn has(&self, item: Item) -> bool {
        self.holds.contains(&item.0) || self.chunks.contains(&item)
    }
}

impl PeerState {
    /// A peer not known to hold anything yet.
    pub(super) fn new(addr: PeerAddr) -> Self {
        PeerState {
            addr,
            holds: HashSet::new(),
            chunks: HashSet::new(),
            in_flight: 0,
            urgent_in_flight: 0,
            failures: 0,
            banned: false,
            dead: false,
        }
    }
}

/// One chunk request handed to a worker.
pub(super) struct Job {
    /// The only live peer of the download serves it, and a refresh found no other: a
    /// seeder must not hold it back (super-seeding assumes the asker can get chunks
    /// from others).
    pub(super) sole: bool,
    pub(super) item: Item,
    pub(super) peer: usize,
    pub(super) addr: PeerAddr,
    pub(super) urgent: bool,
}

pub(super) enum Next {
    Job(Job),
    Wait,
    Refresh,
    Done,
}

impl Sched {
    pub(super) fn new(peers: Vec<PeerState>, early: HashSet<FragmentIndex>) -> Self {
        Sched {
            heap: BinaryHeap::new(),
            queued: HashMap::new(),
            urgent_queued: 0,
            urgent_in_flight: 0,
            boost: HashMap::new(),
            early,
            pending: HashSet::new(),
            next_rank: 0,
            urgent_per_peer: 1,
            stalled: Vec::new(),
            in_flight: 0,
            peers,
            excluded: HashMap::new(),
            left: HashMap::new(),
            sources: HashMap::new(),
            rounds: 0,
            refreshing: false,
            last_error: None,
            bytes: 0,
            done: Vec::new(),
            fatal: None,
            finished: false,
            alive: 0,
            wanted: BTreeSet::new(),
            fragment_count: 0,
            shuffle: false,
            random_first: false,
            verified: 0,
            bans: None,
        }
    }

    pub(super) fn rarity(&self, item: Item) -> usize {
        self.peers
            .iter()
            .filter(|p| !p.banned && p.has(item))
            .count()
    }

    /// Whether peer `p` holds the whole video.
    pub(super) fn is_seeder(&self, p: usize) -> bool {
        self.fragment_count > 0 && self.peers[p].holds.len() as u32 >= self.fragment_count
    }

    /// The class and rank an item is queued with now.
    pub(super) fn class_of(&self, item: Item) -> (u8, u64) {
        if let Some(&b) = self.boost.get(&item) {
            return b;
        }
        if self.early.contains(&item.0) {
            return (priority::EARLY, 0);
        }
        if self.random_first {
            return (priority::NORMAL, fastrand::u64(..1 << 20));
        }
        let rarity = (self.rarity(item) as u64) << 20;
        let tie = if self.shuffle {
            fastrand::u64(..1 << 20)
        } else {
            0
        };
        (priority::NORMAL, rarity | tie)
    }

    /// Adds a wanted item (not verified here) to the download.
    pub(super) fn want(&mut self, item: Item) {
        if self.pending.insert(item) {
            *self.left.entry(item.0).or_default() += 1;
            self.enqueue(item);
        }
    }

    /// Queues an item (again) with its current class; replaces an older entry.
    pub(super) fn enqueue(&mut self, item: Item) {
        let (class, rank) = self.class_of(item);
        let key = (class, rank, item.0, item.1);
        self.dequeue(item);
        if class == priority::URGENT {
            self.urgent_queued += 1;
        }
        self.queued.insert(item, key);
        self.heap.push(Reverse(key));
    }

    /// Takes an item out of the queue (its heap entry goes stale).
    pub(super) fn dequeue(&mut self, item: Item) -> Option<Key> {
        let key = self.queued.remove(&item)?;
        if key.0 == priority::URGENT {
            self.urgent_queued -= 1;
        }
        Some(key)
    }

    /// Makes items URGENT, in the order given, after those already urgent. Items
    /// already urgent keep their place; verified ones are skipped. Returns how many
    /// items are newly urgent.
    pub(super) fn prioritize(&mut self, items: &[Item], verified: impl Fn(Item) -> bool) -> usize {
        if self.finished {
            return 0;
        }
        let mut n = 0;
        for &item in items {
            if self
                .boost
                .get(&item)
                .is_some_and(|b| b.0 == priority::URGENT)
                || verified(item)
            {
                continue;
            }
            self.boost.insert(item, (priority::URGENT, self.next_rank));
            self.next_rank += 1;
            n += 1;
            if self.queued.contains_key(&item) {
                self.enqueue(item);
            } else {
                // Queued above when new; in flight or stalled items keep the boost
                // for when they are queued again.
                self.want(item);
            }
        }
        n
    }

    /// Returns URGENT items to the class they had before.
    pub(super) fn release(&mut self, items: &[Item]) {
        for &item in items {
            if self
                .boost
                .get(&item)
                .is_some_and(|b| b.0 == priority::URGENT)
            {
                self.boost.remove(&item);
                if self.queued.contains_key(&item) {
                    self.enqueue(item);
                }
            }
        }
    }

    pub(super) fn eligible(&self, item: Item, p: usize) -> bool {
        let st = &self.peers[p];
        !st.banned
            && !st.dead
            && st.has(item)
            && !self.excluded.get(&item).is_some_and(|x| x.contains(&p))
    }

    pub(super) fn next(&mut self, per_peer: usize) -> Next {
        if self.fatal.is_some() {
            return Next::Done;
        }
        // Peers an urgent chunk is in flight from or waits for: no background chunk
        // starts there, so it does not share that peer's upload with the player's bytes.
        let mut reserved: Vec<bool> = self.peers.iter().map(|p| p.urgent_in_flight > 0).collect();
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(Reverse(key)) = self.heap.pop() {
            let item = (key.2, key.3);
            if self.queued.get(&item) != Some(&key) {
                continue; // stale: re-queued with another key, or taken
            }
            let urgent = key.0 == priority::URGENT;
            let candidates: Vec<usize> = (0..self.peers.len())
                .filter(|&p| self.eligible(item, p))
                .collect();
            if candidates.is_empty() {
                self.dequeue(item);
                self.stalled.push(item);
                continue;
            }
            let usable = |s: &Self, reserved: &[bool], p: usize| {
                let st = &s.peers[p];
                st.in_flight < per_peer
                    && if urgent {
                        st.urgent_in_flight < s.urgent_per_peer
                    } else {
                        !reserved[p]
                    }
            };
            // Least loaded first; among equals, spread by chunk number.
            let free = candidates
                .iter()
                .copied()
                .filter(|&p| usable(self, &reserved, p))
                // Seeders last (they serve what nobody else can), for a player's
                // chunks too: when a crowd watches together, the seeder's upload is
                // the scarce resource and a chunk a viewer already holds should come
                // from that viewer. Then the least loaded; among equals, spread by
                // chunk number.
                .min_by_key(|&p| {
                    (
                        self.is_seeder(p),
                        self.peers[p].in_flight,
                        (p + key.3 as usize) % self.peers.len(),
                    )
                });
            if let Some(p) = free {
                self.dequeue(item);
                found = Some((item, p, urgent));
                break;
            }
            if urgent {
                for &p in &candidates {
                    reserved[p] = true;
                }
            }
            busy.push(Reverse(key));
            // Items further down the heap have no more options than this one.
            let any_usable = (0..self.peers.len()).any(|p| {
                !self.peers[p].banned && !self.peers[p].dead && usable(self, &reserved, p)
            });
            if !any_usable {
                break;
            }
        }
        self.heap.extend(busy);
        if let Some((item, p, urgent)) = found {
            self.in_flight += 1;
            self.peers[p].in_flight += 1;
            if urgent {
                self.urgent_in_flight += 1;
                self.peers[p].urgent_in_flight += 1;
            }
            // Only after a round with nothing else to do: at first a leecher knows only
            // the seeder, and should find other leechers before asking it for more.
            let sole =
                self.rounds > 0 && self.peers.iter().filter(|q| !q.banned && !q.dead).count() <= 1;
            return Next::Job(Job {
                item,
                peer: p,
                addr: self.peers[p].addr.clone(),
                urgent,
                sole,
            });
        }
        if self.queued.is_empty() && self.in_flight == 0 {
            if self.stalled.is_empty() {
                return Next::Done;
            }
            if !self.refreshing {
                self.refreshing = true;
                return Next::Refresh;
            }
        }
        Next::Wait
    }

    /// A worker found nothing left to do and stops; the last one ends the download.
    pub(super) fn worker_done(&mut self) {
        self.alive = self.alive.saturating_sub(1);
        if self.alive == 0 {
            self.finished = true;
        }
    }

    /// `addr` holds `fragments` (or is worth asking, when `None`): the peer joins the
    /// download, and stalled chunks it holds are queued again at once. Returns how many
    /// were re-queued; 0 for a banned peer.
    pub(super) fn add_peer(
        &mut self,
        addr: PeerAddr,
        fragments: Option<&[FragmentIndex]>,
    ) -> usize {
        let p = match self.peers.iter().position(|p| p.addr == addr) {
            Some(p) => p,
            None => {
                let mut peer = PeerState::new(addr);
                peer.banned = self.bans.as_ref().is_some_and(|b| b.is_banned(&peer.addr));
                self.peers.push(peer);
                self.peers.len() - 1
            }
        };
        if self.peers[p].banned {
            return 0;
        }
        let Some(fragments) = fragments else {
            return 0;
        };
        self.peers[p].holds.extend(fragments.iter().copied());
        self.peers[p].dead = false;
        self.requeue_stalled_held_by(p)
    }

    /// Peer `p` verified `items` (its watch said so): they become eligible there, the
    /// queued ones are ranked again (rarity changed) and stalled ones queued again.
    /// Returns how many stalled items were re-queued.
    pub(super) fn peer_has(&mut self, p: usize, items: &[Item]) -> usize {
        if self.peers[p].banned {
            return 0;
        }
        let mut changed = Vec::new();
        for &item in items {
            if !self.peers[p].has(item) && self.peers[p].chunks.insert(item) {
                changed.push(item);
            }
        }
        self.peers[p].dead = false;
        for &item in &changed {
            if self.queued.contains_key(&item) {
                self.enqueue(item);
            }
        }
        self.requeue_stalled_held_by(p)
    }

    /// Stalled items peer `p` holds go back to the queue (and `p` may be asked for them
    /// again). Returns how many.
    fn requeue_stalled_held_by(&mut self, p: usize) -> usize {
        let stalled = std::mem::take(&mut self.stalled);
        let (now, still): (Vec<Item>, Vec<Item>) =
            stalled.into_iter().partition(|it| self.peers[p].has(*it));
        self.stalled = still;
        for item in &now {
            if let Some(x) = self.excluded.get_mut(item) {
                x.remove(&p);
            }
            self.enqueue(*item);
        }
        now.len()
    }

    /// A chunk of this download verified: counts towards leaving random-first.
    pub(super) fn chunk_verified(&mut self) {
        self.verified += 1;
        if self.verified >= RANDOM_FIRST_CHUNKS {
            self.random_first = false;
        }
    }

    /// A job ended: frees its slots.
    pub(super) fn end_job(&mut self, job: &Job) {
        self.in_flight -= 1;
        self.peers[job.peer].in_flight -= 1;
        if job.urgent {
            self.urgent_in_flight -= 1;
            self.peers[job.peer].urgent_in_flight -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;
    use crate::manifest::FragmentInfo;

    /// A manifest of `frags` fragments of `size` bytes in chunks of `chunk`.
    fn manifest(frags: u32, size: u64, chunk: u32) -> Manifest {
        let h = Digest::of(b"x");
        let fragments = (0..frags)
            .map(|i| FragmentInfo {
                chunks: vec![h; size.div_ceil(chunk as u64) as usize],
                hash: h,
                index: i,
                offset: i as u64 * size,
                size,
            })
            .collect();
        Manifest {
            chunk_size: chunk,
            fragment_count: frags,
            fragments,
            hash: h,
            mime: "video/mp4".into(),
            name: "v.mp4".into(),
            size: frags as u64 * size,
            version: 1,
        }
    }

    fn peer(port: u16, holds: &[FragmentIndex]) -> PeerState {
        let mut p = PeerState::new(PeerAddr::parse(&format!("127.0.0.1:{port}"), "tcp").unwrap());
        p.holds = holds.iter().copied().collect();
        p
    }

    /// Four fragments of two chunks; fragments 0 and 3 are EARLY.
    fn sched(peers: Vec<PeerState>) -> Sched {
        let mut s = Sched::new(peers, [0, 3].into());
        s.urgent_per_peer = 100;
        for f in 0..4 {
            for c in 0..2 {
                s.want((f, c));
            }
        }
        s
    }

    fn job(s: &mut Sched, per_peer: usize) -> Job {
        match s.next(per_peer) {
            Next::Job(j) => j,
            _ => panic!("expected a job"),
        }
    }

    #[test]
    fn covering_maps_file_bytes_to_chunks() {
        let m = manifest(3, 10, 4); // fragments of chunks 4+4+2
        assert_eq!(covering(&m, 0, 1), vec![(0, 0)]);
        assert_eq!(covering(&m, 3, 2), vec![(0, 0), (0, 1)]);
        assert_eq!(covering(&m, 8, 4), vec![(0, 2), (1, 0)]);
        assert_eq!(covering(&m, 25, 100), vec![(2, 1), (2, 2)]);
        assert_eq!(covering(&m, 30, 1), vec![], "past the end");
        assert_eq!(covering(&m, 5, 0), vec![]);
        assert_eq!(covering(&m, 0, u64::MAX).len(), 9);
    }

    #[test]
    fn first_and_last_fragment_come_first_then_rarest() {
        let mut s = sched(vec![peer(1, &[0, 1, 2, 3]), peer(2, &[0, 1, 3])]);
        let order: Vec<Item> = (0..8).map(|_| job(&mut s, 100).item).collect();
        assert_eq!(
            order,
            vec![
                (0, 0),
                (0, 1),
                (3, 0),
                (3, 1),
                (2, 0), // one holder: rarer than fragment 1
                (2, 1),
                (1, 0),
                (1, 1)
            ]
        );
    }

    #[test]
    fn urgent_chunks_go_first_in_deadline_order_and_release_demotes_them() {
        let mut s = sched(vec![peer(1, &[0, 1, 2, 3])]);
        assert_eq!(s.prioritize(&[(2, 1), (1, 0)], |_| false), 2);
        assert_eq!(
            s.prioritize(&[(2, 1), (1, 1)], |_| false),
            1,
            "already urgent keeps its place"
        );
        assert_eq!(s.prioritize(&[(3, 0)], |i| i == (3, 0)), 0, "verified");
        let first: Vec<Job> = (0..3).map(|_| job(&mut s, 100)).collect();
        let items: Vec<Item> = first.iter().map(|j| j.item).collect();
        assert_eq!(items, vec![(2, 1), (1, 0), (1, 1)]);
        assert!(
            matches!(s.next(100), Next::Wait),
            "no background chunk while urgent ones are in flight from the only peer"
        );
        for j in &first {
            s.end_job(j);
        }
        s.prioritize(&[(2, 0)], |_| false);
        s.release(&[(2, 0)]);
        assert_eq!(s.urgent_queued, 0);
        assert_eq!(job(&mut s, 100).item, (0, 0), "released: back to its class");
    }

    #[test]
    fn no_background_chunk_starts_on_a_peer_an_urgent_chunk_needs() {
        // Peer 1 holds everything; peer 2 only fragment 3.
        let mut s = sched(vec![peer(1, &[0, 1, 2, 3]), peer(2, &[3])]);
        s.prioritize(&[(1, 0), (1, 1)], |_| false);
        let a = job(&mut s, 1);
        assert_eq!((a.item, a.peer, a.urgent), ((1, 0), 0, true));
        // (1, 1) waits for peer 1 (full); background may only use peer 2.
        let b = job(&mut s, 1);
        assert_eq!((b.item, b.peer, b.urgent), ((3, 0), 1, false));
        assert!(matches!(s.next(1), Next::Wait));
        s.end_job(&a);
        s.pending.remove(&a.item);
        let c = job(&mut s, 1);
        assert_eq!((c.item, c.urgent), ((1, 1), true));
        s.end_job(&c);
        s.end_job(&b);
        // Nothing urgent left: background resumes on peer 1 with the early fragment.
        assert_eq!(job(&mut s, 1).item, (0, 0));
    }

    #[test]
    fn one_urgent_request_at_a_time_per_peer_by_default() {
        let mut s = sched(vec![peer(1, &[0, 1, 2, 3]), peer(2, &[0, 1, 2, 3])]);
        s.urgent_per_peer = 1;
        s.prioritize(&[(1, 0), (1, 1), (2, 0)], |_| false);
        let (a, b) = (job(&mut s, 4), job(&mut s, 4));
        assert_eq!((a.item, b.item), ((1, 0), (1, 1)));
        assert_ne!(
            a.peer, b.peer,
            "the second urgent chunk goes to the other peer"
        );
        assert!(
            matches!(s.next(4), Next::Wait),
            "(2, 0) waits for a peer; no background chunk starts meanwhile"
        );
        s.end_job(&a);
        let c = job(&mut s, 4);
        assert_eq!((c.item, c.peer), ((2, 0), a.peer));
    }

    #[test]
    fn prioritizing_an_unwanted_chunk_adds_it() {
        let mut s = Sched::new(vec![peer(1, &[0, 1])], HashSet::new());
        s.want((0, 0));
        assert_eq!(s.prioritize(&[(1, 1)], |_| false), 1);
        let urgent = job(&mut s, 10);
        assert_eq!(urgent.item, (1, 1));
        s.end_job(&urgent);
        assert_eq!(job(&mut s, 10).item, (0, 0));
        assert!(
            matches!(s.next(10), Next::Wait),
            "one in flight, nothing queued"
        );
        s.finished = true;
        assert_eq!(s.prioritize(&[(1, 0)], |_| false), 0, "ended");
    }

    #[test]
    fn a_chunk_a_peer_verified_becomes_eligible_there_and_leaves_the_stalled_list() {
        // Peer 1 holds nothing whole; peer 2 holds fragment 3.
        let mut s = Sched::new(vec![peer(1, &[]), peer(2, &[3])], HashSet::new());
        s.want((1, 0));
        s.want((1, 1));
        assert!(
            matches!(s.next(4), Next::Refresh | Next::Wait),
            "nobody holds fragment 1"
        );
        assert_eq!(s.stalled.len(), 2);
        assert_eq!(s.peer_has(0, &[(1, 1)]), 1, "one stalled chunk re-queued");
        let j = job(&mut s, 4);
        assert_eq!((j.item, j.peer), ((1, 1), 0));
        assert_eq!(
            s.stalled,
            vec![(1, 0)],
            "the other still waits for a holder"
        );
        s.peers[0].banned = true;
        assert_eq!(
            s.peer_has(0, &[(1, 0)]),
            0,
            "a banned peer's news is ignored"
        );
    }

    #[test]
    fn rarest_chunk_first_and_seeders_only_for_what_no_one_else_has() {
        // Peer 0 is a seeder of a 2-fragment video; peer 1 holds chunk (0, 1) alone.
        let mut s = Sched::new(vec![peer(1, &[0, 1]), peer(2, &[])], HashSet::new());
        s.fragment_count = 2;
        s.peer_has(1, &[(0, 1)]);
        for item in [(0, 0), (0, 1), (1, 0)] {
            s.want(item);
        }
        // (0, 0) and (1, 0) have one holder (the seeder), (0, 1) two: rarest first.
        let a = job(&mut s, 4);
        let b = job(&mut s, 4);
        assert_eq!([a.item, b.item].iter().filter(|i| i.1 == 0).count(), 2);
        assert!(a.peer == 0 && b.peer == 0);
        let c = job(&mut s, 4);
        assert_eq!(
            (c.item, c.peer),
            ((0, 1), 1),
            "the leecher's chunk comes from the leecher, not the seeder"
        );
    }

    #[test]
    fn random_first_ends_after_a_few_chunks() {
        let mut s = sched(vec![peer(1, &[0, 1, 2, 3])]);
        s.random_first = true;
        for _ in 0..RANDOM_FIRST_CHUNKS - 1 {
            s.chunk_verified();
            assert!(s.random_first);
        }
        s.chunk_verified();
        assert!(!s.random_first, "rarest first from here on");
    }
}
