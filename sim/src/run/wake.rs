//! The coordinator's wake reaching an agent ([`Event::WakeAgent`], sent by
//! [`crate::actors::SimWaker`]): as node-agent's loop (node-agent/src/run.rs), the agent runs an
//! ordinary loop at once, never overlapping the running one (a wake during a loop makes the next
//! one start as soon as it ends) and at most one early loop per [`MIN_WAKE_GAP`] from the last
//! start; the regular cadence then goes on from the woken loop.

use super::*;

/// node-agent's `wake::MIN_WAKE_GAP`.
pub const MIN_WAKE_GAP: Us = 100 * MS;

impl Sim {
    pub(super) fn wake_agent(&mut self, node: usize) {
        let now = self.world.now();
        let slot = &mut self.slots[node];
        let name = {
            let w = self.world.lock();
            // Down, or the process hangs (it cannot even take the request): nothing happens.
            if !w.nodes[node].up || slot.hung {
                drop(w);
                self.world.lock().counters.wakes_lost += 1;
                return;
            }
            // As node-agent's loop: the woken loop also publishes the heartbeat.
            if let Some(handle) = &w.agent_handles[node] {
                handle.woken();
            }
            w.nodes[node].name.clone()
        };
        let id = ActorId { slot: node, inc: slot.inc };
        match slot.state {
            SlotState::Down => self.world.lock().counters.wakes_lost += 1,
            // The loop runs: the next one starts when it ends (see `Sim::poll`).
            SlotState::Busy(_) => slot.wake_pending = true,
            SlotState::Idle(_) => {
                let earliest = slot.started + MIN_WAKE_GAP;
                if now < earliest {
                    self.world.lock().schedule(earliest, Event::WakeAgent { node });
                    return;
                }
                // The step already scheduled is replaced by this one.
                slot.skip_steps += 1;
                {
                    let mut w = self.world.lock();
                    w.counters.woken_ticks += 1;
                    w.log(format!("agent {name}: woken"));
                }
                self.start_step(id);
            }
        }
    }
}
