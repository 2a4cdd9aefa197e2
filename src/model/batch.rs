//! Several frames through the Holistic graph at once, for a device that runs
//! a batch for about the price of one input (a GPU): every frame on its own
//! thread with its own [`Holistic`] and tracking state, every net call of
//! those pipelines gathered, and the same net for all of them run as one
//! [`NetRunner::run_batch`].
//!
//! Lockstep: the calling thread (the coordinator) waits until every frame
//! still running is blocked on a net call, then runs what they asked for, one
//! batch per net (all the frames' pose detections together, then all the
//! pose-landmark ROIs, then the face and hand ROIs, as the graph reaches
//! them), and lets them go on. A frame whose graph takes a shorter path
//! (nobody in view, no hands) finishes early and the others go on without
//! it. The pipeline code is the one-frame code, unchanged: what each frame
//! computes does not depend on its company, only the nets' rounding may
//! (`run_batch`'s contract).
//!
//! Why threads rather than a pipeline rewritten stage by stage: the graph
//! is data-dependent (tracking or detection, how many people, which parts),
//! and one code path for one frame and for a batch is what keeps the batched
//! results the same as one at a time.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::{Holistic, Net, NetError, NetRunner};
use crate::config::Branches;

/// The nets of one device and a pipeline per place in a batch.
pub struct Batched {
    nets: Box<dyn NetRunner>,
    members: Vec<Holistic>,
    link: Arc<Link>,
}

/// What the coordinator and the frames' threads share.
struct Link {
    state: Mutex<LinkState>,
    /// A frame asked for a net, or finished.
    to_coordinator: Condvar,
    /// Answers are in.
    to_members: Condvar,
}

struct LinkState {
    /// Frames of this batch not finished yet.
    running: usize,
    /// Per place: the net and input a blocked frame waits on.
    requests: Vec<Option<(Net, Vec<f32>)>>,
    /// Per place: the answer, until its frame takes it.
    answers: Vec<Option<Result<Vec<Vec<f32>>, NetError>>>,
    /// A batched forward panicked: the device may be in any state; every
    /// later call fails and the owner retires these nets.
    broken: bool,
}

/// The nets as one frame's pipeline sees them: each call waits for the
/// batch it joins.
struct Member {
    place: usize,
    link: Arc<Link>,
}

impl NetRunner for Member {
    fn run(&self, net: Net, input_nhwc: &[f32]) -> Result<Vec<Vec<f32>>, NetError> {
        let mut state = self.link.state.lock();
        if state.broken {
            return Err(broken());
        }
        state.requests[self.place] = Some((net, input_nhwc.to_vec()));
        self.link.to_coordinator.notify_one();
        loop {
            if let Some(answer) = state.answers[self.place].take() {
                return answer;
            }
            self.link.to_members.wait(&mut state);
        }
    }
}

fn broken() -> NetError {
    NetError::Backend("the device failed during a batched forward pass".into())
}

/// Uncounts a frame when its thread ends, normally or by a panic, so the
/// coordinator never waits for it.
struct Finished<'a>(&'a Link);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.running -= 1;
        self.0.to_coordinator.notify_one();
    }
}

impl Batched {
    /// `nets` for up to `capacity` frames at a time.
    pub fn new(nets: Box<dyn NetRunner>, capacity: usize) -> Batched {
        let capacity = capacity.max(1);
        let link = Arc::new(Link {
            state: Mutex::new(LinkState {
                running: 0,
                requests: vec![None; capacity],
                answers: (0..capacity).map(|_| None).collect(),
                broken: false,
            }),
            to_coordinator: Condvar::new(),
            to_members: Condvar::new(),
        });
        let members = (0..capacity)
            .map(|place| {
                let member = Member {
                    place,
                    link: link.clone(),
                };
                // One thread per frame already: no second one per frame.
                Holistic::new(Box::new(member)).with_branches(Branches::Off)
            })
            .collect();
        Batched {
            nets,
            members,
            link,
        }
    }

    /// Frames one batch may hold.
    pub fn capacity(&self) -> usize {
        self.members.len()
    }

    /// Whether a batched forward pass panicked: the nets should not be used
    /// again.
    pub fn broken(&self) -> bool {
        self.link.state.lock().broken
    }

    /// Runs `work` on every item, each on its own thread with its own
    /// pipeline, the items' net calls batched; the answers in the items'
    /// order, a panic of `work` as the `Err` of its item only. More items
    /// than [`Batched::capacity`] go in several batches.
    pub fn run<T: Send, R: Send>(
        &mut self,
        items: Vec<T>,
        work: impl Fn(&Holistic, T) -> R + Sync,
    ) -> Vec<std::thread::Result<R>> {
        let mut out = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let chunk: Vec<T> = items.by_ref().take(self.capacity()).collect();
            out.extend(self.run_one_batch(chunk, &work));
        }
        out
    }

    fn run_one_batch<T: Send, R: Send>(
        &mut self,
        items: Vec<T>,
        work: &(impl Fn(&Holistic, T) -> R + Sync),
    ) -> Vec<std::thread::Result<R>> {
        {
            let mut state = self.link.state.lock();
            state.running = items.len();
            state.requests.iter_mut().for_each(|r| *r = None);
            state.answers.iter_mut().for_each(|a| *a = None);
        }
        let link = &*self.link;
        let nets = &*self.nets;
        std::thread::scope(|scope| {
            let threads: Vec<_> = self
                .members
                .iter_mut()
                .zip(items)
                .map(|(member, item)| {
                    std::thread::Builder::new()
                        .name("batch-frame".into())
                        .spawn_scoped(scope, move || {
                            let _finished = Finished(link);
                            work(&*member, item)
                        })
                        .map_err(|e| {
                            // The item went with the closure; its frame is
                            // answered as a failure, and not waited for.
                            let mut state = link.state.lock();
                            state.running -= 1;
                            format!("cannot spawn a batch thread: {e}")
                        })
                })
                .collect();
            coordinate(link, nets);
            threads
                .into_iter()
                .map(|t| match t {
                    Ok(handle) => handle.join(),
                    Err(message) => Err(Box::new(message) as Box<dyn std::any::Any + Send>),
                })
                .collect()
        })
    }
}

/// Until every frame has finished: wait for all the running ones to block
/// on a net, run each net asked for as one batch, hand out the answers.
fn coordinate(link: &Link, nets: &dyn NetRunner) {
    let mut state = link.state.lock();
    loop {
        if state.running == 0 {
            return;
        }
        let waiting = state.requests.iter().filter(|r| r.is_some()).count();
        if waiting < state.running {
            link.to_coordinator.wait(&mut state);
            continue;
        }
        let requests: Vec<(usize, Net, Vec<f32>)> = state
            .requests
            .iter_mut()
            .enumerate()
            .filter_map(|(place, r)| r.take().map(|(net, input)| (place, net, input)))
            .collect();
        let broken_before = state.broken;
        let (answers, broken_now) = parking_lot::MutexGuard::unlocked(&mut state, || {
            run_requests(nets, requests, broken_before)
        });
        state.broken |= broken_now;
        for (place, answer) in answers {
            state.answers[place] = Some(answer);
        }
        link.to_members.notify_all();
    }
}

type Answers = Vec<(usize, Result<Vec<Vec<f32>>, NetError>)>;

/// One [`NetRunner::run_batch`] per net asked for, in the graph's order;
/// whether one of them panicked.
fn run_requests(
    nets: &dyn NetRunner,
    requests: Vec<(usize, Net, Vec<f32>)>,
    mut broken: bool,
) -> (Answers, bool) {
    let mut answers = Vec::with_capacity(requests.len());
    for net in Net::ALL {
        let group: Vec<&(usize, Net, Vec<f32>)> =
            requests.iter().filter(|(_, n, _)| *n == net).collect();
        if group.is_empty() {
            continue;
        }
        let inputs: Vec<&[f32]> = group.iter().map(|(_, _, input)| input.as_slice()).collect();
        let outcome = if broken {
            Err(broken_error())
        } else {
            match std::panic::catch_unwind(AssertUnwindSafe(|| nets.run_batch(net, &inputs))) {
                Ok(Ok(outputs)) if outputs.len() == group.len() => Ok(outputs),
                Ok(Ok(outputs)) => Err(NetError::Output {
                    net,
                    message: format!("{} answers for a batch of {}", outputs.len(), group.len()),
                }
                .to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_panic) => {
                    broken = true;
                    Err(broken_error())
                }
            }
        };
        match outcome {
            Ok(outputs) => {
                for ((place, _, _), output) in group.into_iter().zip(outputs) {
                    answers.push((*place, Ok(output)));
                }
            }
            Err(message) => {
                for (place, _, _) in group {
                    answers.push((*place, Err(NetError::Backend(message.clone()))));
                }
            }
        }
    }
    (answers, broken)
}

fn broken_error() -> String {
    broken().to_string()
}
