//! A drain's window: how many held messages are out at once, and which may
//! go. Up to `size` messages are taken off the hold queue's head; each
//! customer's own go one at a time, in the order they were taken (a later
//! one waits, *parked*, until the one before it is done), while different
//! customers' go side by side. A message that is held back (the rate limit,
//! the account paused again, its delivery lease busy) stops the window from
//! starting more; once nothing is out, everything not done is put back,
//! oldest first, so the queue's head is again what was taken first.
//!
//! Pure bookkeeping, no broker: the drain ([`super::Drain`]) takes, starts,
//! acks and puts back what it says.

use std::collections::{HashSet, VecDeque};

/// A message in the window: its place in take order, its customer, and
/// what the drain keeps for it (the broker's delivery).
#[derive(Debug)]
pub struct Slot<T> {
    pub seq: u64,
    pub recipient: String,
    pub item: T,
}

#[derive(Debug)]
pub struct Window<T> {
    size: usize,
    next_seq: u64,
    /// Customers with a message out: one each, so also how many are out.
    busy: HashSet<String>,
    /// Taken, waiting for the customer's earlier message.
    parked: VecDeque<Slot<T>>,
    /// Held back: to be put back.
    back: Vec<Slot<T>>,
    /// Told to start nothing more (the drain is stopping).
    halted: bool,
}

impl<T> Window<T> {
    pub fn new(size: usize) -> Window<T> {
        Window {
            size: size.max(1),
            next_seq: 0,
            busy: HashSet::new(),
            parked: VecDeque::new(),
            back: Vec::new(),
            halted: false,
        }
    }

    /// Start nothing more: what is out settles, the rest is put back.
    pub fn halt(&mut self) {
        self.halted = true;
    }

    /// Something was held back: start nothing more until it is put back.
    pub fn holding(&self) -> bool {
        self.halted || !self.back.is_empty()
    }

    /// May another message be taken off the queue?
    pub fn room(&self) -> bool {
        !self.holding() && self.out() + self.parked.len() < self.size
    }

    /// Messages out now.
    pub fn out(&self) -> usize {
        self.busy.len()
    }

    /// Messages taken and not yet done (out, parked, held back).
    pub fn taken(&self) -> usize {
        self.out() + self.parked.len() + self.back.len()
    }

    /// A message taken off the queue: the slot to start now, or none (its
    /// customer has one out; it is parked behind it).
    pub fn take(&mut self, recipient: String, item: T) -> Option<Slot<T>> {
        let slot = Slot {
            seq: self.next_seq,
            recipient,
            item,
        };
        self.next_seq += 1;
        if self.busy.contains(&slot.recipient) || self.holding() {
            self.parked.push_back(slot);
            return None;
        }
        self.busy.insert(slot.recipient.clone());
        Some(slot)
    }

    /// A started message is done: sent (or otherwise settled for good), or
    /// `kept` (held back, to be put back). Returns the customer's next
    /// parked message to start, if the window is not holding.
    pub fn done(&mut self, slot: Slot<T>, kept: bool) -> Option<Slot<T>> {
        self.busy.remove(&slot.recipient);
        let recipient = slot.recipient.clone();
        if kept {
            self.back.push(slot);
            return None;
        }
        if self.holding() {
            return None;
        }
        let i = self.parked.iter().position(|p| p.recipient == recipient)?;
        let next = self.parked.remove(i)?;
        self.busy.insert(next.recipient.clone());
        Some(next)
    }

    /// Once nothing is out: everything held back or parked, oldest first,
    /// to be returned to the queue in that order; the window starts afresh.
    pub fn put_back(&mut self) -> Vec<Slot<T>> {
        debug_assert_eq!(self.out(), 0, "put back only once nothing is out");
        let mut all: Vec<Slot<T>> = self.back.drain(..).chain(self.parked.drain(..)).collect();
        all.sort_by_key(|s| s.seq);
        self.busy.clear();
        self.halted = false;
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn one_customer_at_a_time_others_side_by_side() {
        let mut w = Window::new(4);
        let a1 = w.take("a".into(), 1).expect("a's first starts");
        assert!(w.take("a".into(), 2).is_none(), "a's second waits");
        let b1 = w.take("b".into(), 3).expect("b's starts beside it");
        assert!(w.take("a".into(), 4).is_none());
        assert!(!w.room(), "four taken");
        let a2 = w.done(a1, false).expect("a's second goes next");
        assert_eq!(a2.item, 2);
        assert!(w.done(b1, false).is_none());
        let a3 = w.done(a2, false).expect("then a's third");
        assert_eq!(a3.item, 4);
        assert!(w.done(a3, false).is_none());
        assert_eq!(w.taken(), 0);
    }

    #[test]
    fn a_halted_window_starts_nothing_more() {
        let mut w = Window::new(4);
        let a1 = w.take("a".into(), 1).expect("starts");
        assert!(w.take("a".into(), 2).is_none());
        w.halt();
        assert!(!w.room());
        assert!(w.done(a1, false).is_none(), "a's second stays parked");
        let back: Vec<i32> = w.put_back().into_iter().map(|s| s.item).collect();
        assert_eq!(back, vec![2]);
        assert!(w.room());
    }

    #[test]
    fn a_message_held_back_puts_back_everything_not_done_oldest_first() {
        let mut w = Window::new(8);
        let a1 = w.take("a".into(), "a1").expect("starts");
        let b1 = w.take("b".into(), "b1").expect("starts");
        assert!(w.take("a".into(), "a2").is_none());
        let c1 = w.take("c".into(), "c1").expect("starts");
        // b1 is held back (rate limit): nothing more starts.
        assert!(w.done(b1, true).is_none());
        assert!(!w.room());
        // a1 is sent, but a2 stays parked: the window holds.
        assert!(w.done(a1, false).is_none());
        assert!(w.done(c1, false).is_none());
        let back: Vec<&str> = w.put_back().into_iter().map(|s| s.item).collect();
        assert_eq!(back, vec!["b1", "a2"]);
        assert!(w.room());
        assert!(w.take("a".into(), "a2").is_some(), "a is free again");
    }

    /// Against a model: a queue of messages for a few customers, drained
    /// through windows of every size with random completion order and
    /// random hold-backs (put back at the queue's head as the broker does):
    /// each customer's messages are sent exactly once, in the order held,
    /// never two of one customer out at once, never more than the window.
    #[test]
    fn each_customer_in_order_whatever_finishes_first() {
        for trial in 0..300u64 {
            let mut rng = fastrand::Rng::with_seed(trial);
            let size = rng.usize(1..=20);
            let customers = rng.usize(1..=6);
            let n = rng.usize(1..=80);
            let mut queue: VecDeque<(usize, String)> = (0..n)
                .map(|i| (i, format!("c{}", rng.usize(0..customers))))
                .collect();
            let order: HashMap<String, Vec<usize>> =
                queue.iter().fold(HashMap::new(), |mut m, (i, c)| {
                    m.entry(c.clone()).or_default().push(*i);
                    m
                });
            let mut w = Window::new(size);
            let mut out: Vec<Slot<usize>> = Vec::new();
            let mut sent: HashMap<String, Vec<usize>> = HashMap::new();
            let mut steps = 0;
            while !(queue.is_empty() && w.taken() == 0) {
                steps += 1;
                assert!(steps < 100_000, "trial {trial}: stuck");
                while w.room() {
                    let Some((i, c)) = queue.pop_front() else {
                        break;
                    };
                    if let Some(s) = w.take(c, i) {
                        out.push(s);
                    }
                }
                let customers_out: HashSet<&String> = out.iter().map(|s| &s.recipient).collect();
                assert_eq!(customers_out.len(), out.len(), "trial {trial}: one each");
                assert!(w.taken() <= size, "trial {trial}: within the window");
                if out.is_empty() {
                    let back = w.put_back();
                    assert!(!back.is_empty(), "trial {trial}: nothing out, nothing back");
                    for s in back.into_iter().rev() {
                        queue.push_front((s.item, s.recipient));
                    }
                    continue;
                }
                let s = out.swap_remove(rng.usize(0..out.len()));
                let kept = rng.u8(0..10) == 0;
                if !kept {
                    sent.entry(s.recipient.clone()).or_default().push(s.item);
                }
                if let Some(next) = w.done(s, kept) {
                    out.push(next);
                }
            }
            assert_eq!(sent, order, "trial {trial} (window {size})");
        }
    }
}
