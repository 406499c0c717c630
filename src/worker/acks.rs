//! Acks of one consuming channel, coalesced: a run of deliveries settled together is acked with
//! one `basic.ack` carrying `multiple`, instead of one frame (and, on a quorum queue, one Raft
//! command) each.
//!
//! Every delivery of the channel is settled here — acked or handed back — by one task, in tag
//! order, which is what makes `multiple` safe: it acks every unacked tag up to the one named, so
//! it may only be sent when every lower tag is settled. The rules:
//!
//! - the broker numbers a channel's deliveries 1, 2, 3, …; `floor` is the highest tag below which
//!   everything is settled;
//! - the settled tags just above `floor` are acked with one `multiple` ack (a single tag with a
//!   plain one), and `floor` moves up past them;
//! - a hand-back (`nack`, requeue) just above `floor` is sent on its own, after the acks below it;
//! - a tag settled above a gap (a lower delivery is still at work, say a miss generating) is sent
//!   on its own at once: coalescing never holds an ack back waiting for a slow job.
//!
//! So coalescing pays while nothing below is still at work: hit traffic, and the hits between
//! generations. While a generation is in flight, the hits settled after it are acked one by one,
//! as before this module; once it settles, the floor passes them all and coalescing resumes.
//!
//! A caller's [`Acks::ack`] returns once its frame is sent, as `Acker::ack` did, so a session
//! that waits for its deliveries' tasks before closing the channel still closes it after their
//! acks. If some tag were never settled here, coalescing would stop at it and every later tag
//! would be acked on its own; nothing would be acked that is not settled.

use std::collections::BTreeMap;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

/// Runs of tags acked above a gap, remembered (as ranges) to let `floor` pass them once the gap
/// closes. There are about as many as deliveries at work, at most the prefetch; beyond this many
/// (deliveries never settled here) they are forgotten and coalescing stops for the channel's life.
const MAX_RUNS_ABOVE_GAP: usize = 1 << 16;

/// Why a delivery could not be settled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AckError {
    /// The channel refused or is gone: the broker redelivers what was not acked.
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    /// The channel's ack task has stopped (its session ended).
    #[error("the channel's acks have stopped")]
    Stopped,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Ack,
    /// Nack with requeue: the broker delivers it again.
    HandBack,
}

struct Note {
    tag: u64,
    how: How,
    sent: oneshot::Sender<Result<(), lapin::Error>>,
}

/// The settling side of one consuming channel; cheap to clone. Its task ends when the last
/// clone is dropped.
#[derive(Clone)]
pub(crate) struct Acks {
    notes: mpsc::UnboundedSender<Note>,
}

impl Acks {
    /// Starts the channel's ack task; with `coalesce` off every ack is a plain one (the same
    /// order and the same task).
    pub(crate) fn start(channel: Channel, coalesce: bool) -> Acks {
        let (notes, received) = mpsc::unbounded_channel();
        tokio::spawn(
            settle_all(channel, received, coalesce).instrument(crate::telemetry::task("acks")),
        );
        Acks { notes }
    }

    /// Acks delivery `tag`; returns once the ack (possibly covering others) is sent.
    pub(crate) async fn ack(&self, tag: u64) -> Result<(), AckError> {
        self.settle(tag, How::Ack).await
    }

    /// Hands delivery `tag` back to the queue (nack, requeue); returns once it is sent.
    pub(crate) async fn hand_back(&self, tag: u64) -> Result<(), AckError> {
        self.settle(tag, How::HandBack).await
    }

    async fn settle(&self, tag: u64, how: How) -> Result<(), AckError> {
        let (sent, answer) = oneshot::channel();
        self.notes
            .send(Note { tag, how, sent })
            .map_err(|_| AckError::Stopped)?;
        answer.await.map_err(|_| AckError::Stopped)??;
        Ok(())
    }
}

/// The ack task: settles what it is told, in tag order where it can.
async fn settle_all(channel: Channel, mut notes: mpsc::UnboundedReceiver<Note>, coalesce: bool) {
    let mut order = Order::new(coalesce);
    while let Some(first) = notes.recv().await {
        // Let the other deliveries of a batch that settled together join this round.
        tokio::task::yield_now().await;
        order.settled(first);
        while let Ok(note) = notes.try_recv() {
            order.settled(note);
        }
        for frame in order.frames() {
            let result = send(&channel, &frame).await;
            if frame.how == How::Ack && result.is_ok() {
                crate::telemetry::count_ack_frame(frame.waiting.len());
            }
            for sent in frame.waiting {
                let _ = sent.send(result.clone());
            }
        }
    }
}

async fn send(channel: &Channel, frame: &Frame) -> Result<(), lapin::Error> {
    match frame.how {
        How::Ack => {
            let options = BasicAckOptions {
                multiple: frame.multiple,
            };
            channel.basic_ack(frame.tag, options).await
        }
        How::HandBack => {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            channel.basic_nack(frame.tag, options).await
        }
    }
}

/// One frame to send, and whom it settles.
struct Frame {
    tag: u64,
    how: How,
    multiple: bool,
    waiting: Vec<oneshot::Sender<Result<(), lapin::Error>>>,
}

/// Which frames settle what has been settled, in what order (no I/O: tested on its own).
struct Order {
    coalesce: bool,
    /// Every tag up to this one is settled and sent.
    floor: u64,
    /// Settled, not sent yet.
    settled: BTreeMap<u64, Note>,
    /// Sent on their own above a gap, as ranges (first tag → last tag): `floor` passes them once
    /// the gap closes. A long generation below a stream of hits makes one long range, not one
    /// entry per hit.
    above_gap: BTreeMap<u64, u64>,
}

impl Order {
    fn new(coalesce: bool) -> Order {
        Order {
            coalesce,
            floor: 0,
            settled: BTreeMap::new(),
            above_gap: BTreeMap::new(),
        }
    }

    fn settled(&mut self, note: Note) {
        self.settled.insert(note.tag, note);
    }

    /// The frames for everything settled so far, in the order to send them.
    fn frames(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        if self.coalesce {
            self.run_above_floor(&mut frames);
        }
        // What is left sits above a gap: each on its own.
        let rest = std::mem::take(&mut self.settled);
        for (tag, note) in rest {
            if self.coalesce {
                self.acked_above_gap(tag);
            }
            frames.push(Frame {
                tag,
                how: note.how,
                multiple: false,
                waiting: vec![note.sent],
            });
        }
        if self.above_gap.len() > MAX_RUNS_ABOVE_GAP {
            tracing::warn!(
                floor = self.floor,
                "deliveries in {} places have not been settled; acks are sent one by one from now on",
                MAX_RUNS_ABOVE_GAP
            );
            self.coalesce = false;
            self.above_gap.clear();
        }
        frames
    }

    /// Remembers `tag` as acked above the gap, joining the ranges it touches.
    fn acked_above_gap(&mut self, tag: u64) {
        let mut first = tag;
        let mut last = tag;
        if let Some((&start, &end)) = self.above_gap.range(..tag).next_back()
            && end + 1 == tag
        {
            first = start;
        }
        if let Some(end) = self.above_gap.remove(&(tag + 1)) {
            last = end;
        }
        self.above_gap.insert(first, last);
    }

    /// The run just above `floor`: acks gathered into one `multiple` ack, hand-backs on their own.
    fn run_above_floor(&mut self, frames: &mut Vec<Frame>) {
        let mut run: Vec<oneshot::Sender<Result<(), lapin::Error>>> = Vec::new();
        let mut run_last = 0;
        loop {
            let next = self.floor + 1;
            if let Some(last) = self.above_gap.remove(&next) {
                self.floor = last;
                continue;
            }
            let Some(note) = self.settled.remove(&next) else {
                break;
            };
            self.floor = next;
            match note.how {
                How::Ack => {
                    run.push(note.sent);
                    run_last = next;
                }
                How::HandBack => {
                    flush_run(frames, &mut run, run_last);
                    frames.push(Frame {
                        tag: next,
                        how: How::HandBack,
                        multiple: false,
                        waiting: vec![note.sent],
                    });
                }
            }
        }
        flush_run(frames, &mut run, run_last);
    }
}

fn flush_run(
    frames: &mut Vec<Frame>,
    run: &mut Vec<oneshot::Sender<Result<(), lapin::Error>>>,
    last: u64,
) {
    if run.is_empty() {
        return;
    }
    let waiting = std::mem::take(run);
    frames.push(Frame {
        tag: last,
        how: How::Ack,
        multiple: waiting.len() > 1,
        waiting,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(tag: u64, how: How) -> Note {
        let (sent, _answer) = oneshot::channel();
        Note { tag, how, sent }
    }

    /// (tag, how, multiple, how many it settles) of each frame.
    fn frames(order: &mut Order, notes: &[(u64, How)]) -> Vec<(u64, How, bool, usize)> {
        for &(tag, how) in notes {
            order.settled(note(tag, how));
        }
        order
            .frames()
            .into_iter()
            .map(|f| (f.tag, f.how, f.multiple, f.waiting.len()))
            .collect()
    }

    use How::{Ack, HandBack};

    #[test]
    fn a_run_from_the_floor_is_one_multiple_ack() {
        let mut order = Order::new(true);
        assert_eq!(
            frames(&mut order, &[(3, Ack), (1, Ack), (2, Ack)]),
            [(3, Ack, true, 3)]
        );
        assert_eq!(frames(&mut order, &[(4, Ack)]), [(4, Ack, false, 1)]);
    }

    #[test]
    fn a_tag_above_a_gap_is_acked_at_once_on_its_own_and_passed_over_later() {
        let mut order = Order::new(true);
        // 1 is still at work (a miss): 2 and 3 cannot ride a multiple ack, which would ack 1.
        assert_eq!(
            frames(&mut order, &[(2, Ack), (3, Ack)]),
            [(2, Ack, false, 1), (3, Ack, false, 1)]
        );
        // 1 settles: acked alone; 4 and 5 after the acked 2 and 3 form a run again.
        assert_eq!(frames(&mut order, &[(1, Ack)]), [(1, Ack, false, 1)]);
        assert_eq!(
            frames(&mut order, &[(4, Ack), (5, Ack)]),
            [(5, Ack, true, 2)]
        );
        assert!(order.above_gap.is_empty());
    }

    #[test]
    fn a_hand_back_splits_the_run_and_is_never_covered_by_a_multiple_ack() {
        let mut order = Order::new(true);
        assert_eq!(
            frames(
                &mut order,
                &[(1, Ack), (2, Ack), (3, HandBack), (4, Ack), (5, Ack)]
            ),
            [
                (2, Ack, true, 2),
                (3, HandBack, false, 1),
                (5, Ack, true, 2)
            ]
        );
    }

    #[test]
    fn without_coalescing_every_tag_is_its_own_frame() {
        let mut order = Order::new(false);
        assert_eq!(
            frames(&mut order, &[(1, Ack), (2, Ack), (3, HandBack)]),
            [
                (1, Ack, false, 1),
                (2, Ack, false, 1),
                (3, HandBack, false, 1)
            ]
        );
    }

    #[test]
    fn a_long_generation_below_a_stream_of_hits_is_one_range_and_coalescing_resumes_after_it() {
        let mut order = Order::new(true);
        // Tag 1 generates for a long time while 200,000 hits above it settle, in rounds.
        for round in 0..2_000_u64 {
            let notes: Vec<(u64, How)> = (0..100).map(|i| (2 + round * 100 + i, Ack)).collect();
            assert!(frames(&mut order, &notes).iter().all(|f| !f.2));
        }
        assert_eq!(order.above_gap.len(), 1, "one range");
        assert_eq!(frames(&mut order, &[(1, Ack)]), [(1, Ack, false, 1)]);
        assert_eq!(order.floor, 200_001);
        assert!(order.above_gap.is_empty());
        assert_eq!(
            frames(&mut order, &[(200_002, Ack), (200_003, Ack)]),
            [(200_003, Ack, true, 2)]
        );
    }

    #[test]
    fn ranges_above_a_gap_join_from_either_side() {
        let mut order = Order::new(true);
        frames(&mut order, &[(5, Ack), (3, Ack), (9, Ack)]);
        assert_eq!(order.above_gap.len(), 3);
        frames(&mut order, &[(4, Ack)]);
        assert_eq!(order.above_gap, BTreeMap::from([(3, 5), (9, 9)]));
        // 1, 2 and 6–8 settle: the floor passes everything up to 9.
        assert_eq!(
            frames(
                &mut order,
                &[(1, Ack), (2, Ack), (6, Ack), (7, Ack), (8, Ack)]
            ),
            [(8, Ack, true, 5)]
        );
        assert_eq!(order.floor, 9);
        assert!(order.above_gap.is_empty());
    }

    #[test]
    fn deliveries_never_settled_in_many_places_end_coalescing_instead_of_growing() {
        let mut order = Order::new(true);
        // Every other tag is never settled: as many ranges as acks.
        let notes: Vec<(u64, How)> = (1..=(MAX_RUNS_ABOVE_GAP as u64 + 1))
            .map(|n| (2 * n, Ack))
            .collect();
        let sent = frames(&mut order, &notes);
        assert!(sent.iter().all(|f| !f.2));
        assert!(!order.coalesce);
        assert!(order.above_gap.is_empty());
        assert_eq!(
            frames(&mut order, &[(1, Ack), (3, Ack)]),
            [(1, Ack, false, 1), (3, Ack, false, 1)]
        );
    }
}
