//! Fault injection for [`super::Sim`]: firing each scripted fault on the node it resolves to,
//! healing it, and the operator actions a fault implies (booting a fenced instance).

use super::*;

impl Sim {
    pub(super) fn resolve(&self, w: &mut Shared, t: Target) -> usize {
        match t {
            Target::Node(i) => i.min(self.n - 1),
            Target::Primary => match w.writable().first() {
                Some(&p) => p,
                None => w.rng.below(self.n as u64) as usize,
            },
            Target::Replica => {
                let writable = w.writable();
                let others: Vec<usize> = (0..self.n).filter(|i| !writable.contains(i)).collect();
                if others.is_empty() {
                    w.rng.below(self.n as u64) as usize
                } else {
                    *w.rng.pick(&others)
                }
            }
        }
    }

    pub(super) fn heal_at(&self, w: &mut Shared, after: Us, heal: Heal) {
        let at = w.now + after;
        w.schedule(at, Event::Heal(heal));
    }

    pub(super) fn crash_node(&mut self, i: usize, why: &str) {
        self.kill_slot(i);
        let mut w = self.world.lock();
        let n = &mut w.nodes[i];
        n.up = false;
        n.pg.crash();
        let name = n.name.clone();
        w.log(format!("node {name}: DOWN ({why})"));
    }

    pub(super) fn fault(&mut self, k: usize) {
        let kind = self.script[k].1.clone();
        let mut w = self.world.lock();
        w.count_fault(kind.name());
        let fencing_off = self.coord_config.fencing == FencingPolicy::Off;
        match kind {
            FaultKind::AgentCrash { target, down_for } => {
                let i = self.resolve(&mut w, target);
                if !w.nodes[i].up {
                    return;
                }
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT agent {name} crashes for {}s", down_for / SEC));
                self.heal_at(&mut w, down_for, Heal::AgentStart(i));
                drop(w);
                if fencing_off {
                    // Without fencing only the hardware watchdog stops the Postgres of a dead
                    // agent ([watchdog] in the node agent, assumed enabled when fencing is off).
                    if let Some(after) = self.watchdog_fires_after(i) {
                        let mut w = self.world.lock();
                        let at = w.now + after;
                        w.schedule(at, Event::Boot { node: usize::MAX - i, after_fence: false });
                    }
                }
                self.kill_slot(i);
            }
            FaultKind::PgCrash { target, restart_fails_for } => {
                let i = self.resolve(&mut w, target);
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT postgres {name} crashes (cannot restart for {}s)", restart_fails_for / SEC));
                w.nodes[i].pg.crash();
                w.nodes[i].pg.start_fails_until = w.now + restart_fails_for;
            }
            FaultKind::NodeCrash { target, down_for } => {
                let i = self.resolve(&mut w, target);
                if !w.nodes[i].up {
                    return;
                }
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT node {name} crashes for {}s", down_for / SEC));
                let at = w.now + down_for;
                w.schedule(at, Event::Boot { node: i, after_fence: false });
                drop(w);
                self.crash_node(i, "crash");
            }
            FaultKind::AgentHang { target, hung_for } => {
                let i = self.resolve(&mut w, target);
                if !w.nodes[i].up || w.nodes[i].agent_hung {
                    return;
                }
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT agent {name} hangs for {}s", hung_for / SEC));
                // Without fencing, the hardware watchdog the agent pets is the only thing that
                // stops a hung primary.
                drop(w);
                let watchdog = if fencing_off { self.watchdog_fires_after(i) } else { None };
                let mut w = self.world.lock();
                if let Some(watchdog) = watchdog.filter(|d| hung_for > *d) {
                    let at = w.now + watchdog;
                    w.schedule(at, Event::Heal(Heal::Unhang(i)));
                    w.schedule(at, Event::Boot { node: usize::MAX - i, after_fence: false });
                } else {
                    self.heal_at(&mut w, hung_for, Heal::Unhang(i));
                }
                drop(w);
                self.set_hung(i, true);
            }
            FaultKind::StorePartition { target, for_ } => {
                let i = self.resolve(&mut w, target);
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT {name} cut off from the store for {}s", for_ / SEC));
                w.nodes[i].store_cut = true;
                self.heal_at(&mut w, for_, Heal::StoreUncut(i));
            }
            FaultKind::NodePartition { target, other, for_ } => {
                let a = self.resolve(&mut w, target);
                let b = self.resolve(&mut w, other);
                if a == b {
                    return;
                }
                let (x, y) = (a.min(b), a.max(b));
                let line = format!("FAULT network cut {} <-> {} for {}s", w.nodes[x].name, w.nodes[y].name, for_ / SEC);
                w.log(line);
                w.net_cut.push((x, y));
                self.heal_at(&mut w, for_, Heal::NetUncut(x, y));
            }
            FaultKind::CoordinatorPartition { slot, for_ } => {
                w.log(format!("FAULT coord{slot} cut off from the store for {}s", for_ / SEC));
                w.coord_cut[slot] = true;
                self.heal_at(&mut w, for_, Heal::CoordUncut(slot));
            }
            FaultKind::StoreLatency { min, max, for_ } => {
                w.log(format!("FAULT store latency {}..{} ms for {}s", min / MS, max / MS, for_ / SEC));
                w.store_slow = Some((min, max));
                self.heal_at(&mut w, for_, Heal::StoreFast);
            }
            FaultKind::StoreOutage { for_ } => {
                w.log(format!("FAULT store outage for {}s", for_ / SEC));
                w.store_outage = true;
                self.heal_at(&mut w, for_, Heal::StoreUp);
            }
            FaultKind::MessageDelay { delay, for_ } => {
                w.log(format!("FAULT messages delayed {} ms for {}s", delay / MS, for_ / SEC));
                w.msg_delay = delay;
                self.heal_at(&mut w, for_, Heal::MsgDelayOff);
            }
            FaultKind::ClockDrift { target, ppm, for_ } => {
                let i = self.resolve(&mut w, target);
                let now = w.now;
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT clock of {name} drifts {ppm} ppm for {}s", for_ / SEC));
                w.clocks[i].set_rate(now, ppm);
                self.heal_at(&mut w, for_, Heal::ClockRate(i));
            }
            FaultKind::WallJump { target, by_ms } => {
                let i = self.resolve(&mut w, target);
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT wall clock of {name} jumps {by_ms} ms"));
                w.clocks[i].wall_offset_ms += by_ms;
            }
            FaultKind::CoordinatorKill => {
                w.log("FAULT coordinator killed");
                let now = w.now;
                w.schedule(now, Event::KillCoordinator(0));
            }
            FaultKind::TwoCoordinators { for_ } => {
                w.log(format!("FAULT two coordinators run at once for {}s", for_ / SEC));
                self.heal_at(&mut w, for_, Heal::TwoCoordinatorsOff);
                drop(w);
                self.two_coordinators = true;
                self.invoke_coordinator(0);
                self.invoke_coordinator(1);
            }
            FaultKind::ReplicaStall { target, for_ } => {
                let i = self.resolve(&mut w, target);
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT WAL receiver of {name} stalls for {}s", for_ / SEC));
                w.nodes[i].stalled = true;
                self.heal_at(&mut w, for_, Heal::Unstall(i));
            }
            FaultKind::BadRecords { target } => {
                let i = self.resolve(&mut w, target);
                let name = w.nodes[i].name.clone();
                let id = w.fresh_id();
                w.log(format!(
                    "FAULT records of a newer version and garbage appear ({name}'s heartbeat rewritten as format 2, unreadable items zz-*-{id})"
                ));
                w.store_dirty = true;
                drop(w);
                self.bad_records(&name, id);
            }
            FaultKind::ManualRequest { action, candidate } => {
                let candidate = candidate.map(|t| {
                    let i = self.resolve(&mut w, t);
                    w.nodes[i].name.clone()
                });
                if action == RequestAction::Pause {
                    let after = w.rng.range(10, 60) * SEC;
                    self.heal_at(&mut w, after, Heal::Resume);
                }
                drop(w);
                self.request(action, candidate);
            }
        }
    }

    /// Writes what a newer version or a broken writer would leave behind (FaultKind::BadRecords),
    /// straight into the store as another writer would.
    pub(super) fn bad_records(&self, name: &str, id: u64) {
        use pgdaemon_core::keys;
        let newer_fields = "{\"future_field\":{\"nested\":[1,2]},\"format_version\":2,\"min_reader_version\":1,";
        let own = keys::member(name);
        if let Some(text) = self.store.get_raw(CLUSTER, &own) {
            // Readable: a newer agent's heartbeat of a live member (its agent overwrites it).
            self.store.put_raw(CLUSTER, &own, &text.replacen('{', newer_fields, 1));
            // Unreadable: the same record under another member's key.
            self.store.put_raw(CLUSTER, &keys::member(&format!("zz-stray-{id}")), &text);
        }
        self.store.put_raw(CLUSTER, &keys::member(&format!("zz-garbage-{id}")), "{\"name\": \"zz-garbage\", \"role\": ");
        self.store.put_raw(
            CLUSTER,
            &keys::member(&format!("zz-newer-{id}")),
            &format!("{{\"min_reader_version\":2,\"name\":\"zz-newer-{id}\",\"role\":\"witness\"}}"),
        );
        let term = u64::MAX - 2 * id;
        self.store.put_raw(CLUSTER, &keys::history(term), "not json");
        self.store.put_raw(
            CLUSTER,
            &keys::history(term - 1),
            &format!(
                "{newer_fields}\"term\":{},\"kind\":\"failover\",\"new_primary\":\"{name}\",\"reason\":\"newer\",\"started_ms\":0,\"finished_ms\":0}}",
                term - 1
            ),
        );
        self.store.put_raw(CLUSTER, &keys::event(0, &format!("garbage-{id}")), "[1,");
        self.store.put_raw(
            CLUSTER,
            &keys::event(0, &format!("newer-{id}")),
            &format!("{{\"min_reader_version\":2,\"id\":\"newer-{id}\",\"kind\":\"witness_joined\"}}"),
        );
    }

    /// An operator's request, written like pgdctl does (compare-and-set), then a coordinator run.
    pub(super) fn request(&mut self, action: RequestAction, candidate: Option<String>) -> bool {
        let record = match run_now(self.store.read_cluster(CLUSTER)) {
            Some(Ok(Some(r))) => r,
            _ => return false,
        };
        let mut w = self.world.lock();
        if record.request.is_some() {
            w.log(format!("operator: {action:?} not sent, a request is pending"));
            return false;
        }
        let id = format!("req-{}", w.fresh_id());
        let wall = w.clocks[0].wall_ms(w.now);
        let mut next = record.clone();
        next.request =
            Some(ManualRequest { id: id.clone(), action, candidate: candidate.clone(), force: false, requested_ms: wall });
        let ok = matches!(run_now(self.store.write_cluster(CLUSTER, Some(record.version), &next)), Some(Ok(_)));
        w.log(format!("operator: {action:?} candidate {candidate:?} ({id}): {}", if ok { "sent" } else { "lost the race" }));
        w.store_dirty = true;
        let now = w.now;
        let at = now + w.rng.range(50 * MS, 500 * MS);
        w.schedule(at, Event::Trigger);
        ok
    }

    pub(super) fn heal(&mut self, h: Heal) {
        let mut w = self.world.lock();
        let now = w.now;
        w.last_heal = now;
        match h {
            Heal::AgentStart(i) => {
                let up = w.nodes[i].up;
                drop(w);
                if up && matches!(self.slots[i].state, SlotState::Down) {
                    self.start_agent(i, true);
                }
            }
            Heal::Unhang(i) => {
                let name = w.nodes[i].name.clone();
                w.log(format!("HEAL agent {name} resumes"));
                drop(w);
                self.set_hung(i, false);
            }
            Heal::StoreUncut(i) => {
                w.nodes[i].store_cut = false;
                let name = w.nodes[i].name.clone();
                w.log(format!("HEAL {name} reaches the store again"));
            }
            Heal::NetUncut(a, b) => {
                w.net_cut.retain(|p| *p != (a, b));
                w.log("HEAL network cut repaired");
            }
            Heal::CoordUncut(k) => {
                w.coord_cut[k] = false;
                w.log(format!("HEAL coord{k} reaches the store again"));
            }
            Heal::StoreFast => {
                w.store_slow = None;
                w.log("HEAL store latency normal");
            }
            Heal::StoreUp => {
                w.store_outage = false;
                w.log("HEAL store available");
            }
            Heal::MsgDelayOff => w.msg_delay = 0,
            Heal::Unstall(i) => w.nodes[i].stalled = false,
            Heal::ClockRate(i) => w.clocks[i].set_rate(now, 0),
            Heal::TwoCoordinatorsOff => {
                drop(w);
                self.two_coordinators = false;
            }
            Heal::Resume => {
                drop(w);
                if !self.request(RequestAction::Resume, None) {
                    let mut w = self.world.lock();
                    let at = w.now + SEC;
                    w.schedule(at, Event::Heal(Heal::Resume));
                }
            }
        }
    }

    pub(super) fn boot(&mut self, node: usize, after_fence: bool) {
        let mut w = self.world.lock();
        if node >= self.n {
            // The watchdog of node `usize::MAX - i` fires: a reset, then a boot.
            let i = usize::MAX - node;
            if !w.nodes[i].up {
                return;
            }
            let at = w.now + w.rng.range(10, 40) * SEC;
            w.schedule(at, Event::Boot { node: i, after_fence: false });
            drop(w);
            self.crash_node(i, "watchdog reset");
            return;
        }
        let n = &mut w.nodes[node];
        if n.up || (n.stopped_by_fence && !after_fence) {
            return;
        }
        n.up = true;
        n.stopped_by_fence = false;
        n.stopping = None;
        let name = n.name.clone();
        let now = w.now;
        w.last_heal = now;
        w.log(format!("node {name}: boots{}", if after_fence { " (operator starts the fenced instance)" } else { "" }));
        drop(w);
        self.start_agent(node, true);
    }

    pub(super) fn instance_stopped(&mut self, node: usize) {
        let mut w = self.world.lock();
        if w.nodes[node].stopping.is_none() {
            return;
        }
        w.nodes[node].stopping = None;
        w.nodes[node].stopped_by_fence = true;
        let at = w.now + w.rng.range(20, 120) * SEC;
        w.schedule(at, Event::Boot { node, after_fence: true });
        let was_up = w.nodes[node].up;
        drop(w);
        if was_up {
            self.crash_node(node, "EC2 instance stopped by the fencer");
        } else {
            self.world.lock().log(format!("node {}: instance stopped by the fencer", node + 1));
        }
    }
}
