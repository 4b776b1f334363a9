//! A world of sites and hub replicas around the link's two ends ([`SiteEnd`],
//! [`HubEnd`]), for the model check (`link_model.rs`, every interleaving up to
//! small bounds) and the simulation (`link_simulation.rs`, long random runs decided
//! by a seed).
//!
//! The world is the ends' drivers, with the I/O made of plain data:
//! - each site has its durable store (its event log, the hub's commands it
//!   committed) and what it holds in memory (the end, commands received and not
//!   yet committed);
//! - the hub's replicas share one durable store (per site: the events committed,
//!   the commands issued, how far the site said it holds them, the link's claim);
//!   each replica holds its links' ends and the runs of events they are committing;
//! - the network holds messages in flight, each on one connection. It delivers
//!   them in any order, and may lose or repeat one (a real stream does neither;
//!   the protocol must be safe even so).
//!
//! Every [`Action`] is one input to one end (named after it: `EventLogged`,
//! `Opened`, `Deliver`, `EventsCommitted`, `CommandsCommitted`, `CommandIssued`,
//! `Tick`, `Closed`) or a fault (`Crash`, `Lose`, `Repeat`). A crash loses what
//! is in memory and keeps what is durable.
//!
//! [`World::check`] names the first property a state breaks.

#![allow(dead_code)]

use carrel_proto::link::{
    place, HubEnd, HubInput, HubOutput, Limits, Placement, Seq, SiteEnd, SiteInput, SiteOutput,
    SiteRecord,
};

/// How far a run may go: what the sites record, the hub issues, and the faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bounds {
    pub sites: usize,
    pub replicas: usize,
    /// Events each site records.
    pub events: Seq,
    /// Commands the hub issues to each site.
    pub commands: Seq,
    /// Connections each site opens in all.
    pub connections: u32,
    pub site_crashes: u32,
    pub hub_crashes: u32,
    /// Messages the network loses, and repeats, in all.
    pub losses: u32,
    pub repeats: u32,
    /// Messages in flight at most (further sends wait: the stream's flow control).
    pub in_flight: usize,
    /// Events per message and the window.
    pub limits: Limits,
    /// Commands per message.
    pub commands_per_message: usize,
    /// Heartbeats travel as messages (the simulation; the model leaves them out,
    /// and breaks a silent link with `Closed`).
    pub heartbeats: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Body {
    Hello {
        acked_command_seq: Seq,
        last_event_seq: Seq,
    },
    Events(Vec<Seq>),
    CommandAck(Seq),
    Welcome(Seq),
    EventAck(Seq),
    /// Commands with what each says (its content, as issued).
    Commands(Vec<(Seq, u32)>),
    Heartbeat,
}

/// A message in flight on connection `conn` of `site` to or from `replica`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Message {
    pub conn: u32,
    pub to_hub: bool,
    pub site: usize,
    pub replica: usize,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Site {
    pub end: SiteEnd,
    /// Durable: the event log ends here (events 1..=log).
    pub log: Seq,
    /// Durable: the hub's commands committed, in order (seq, content).
    pub commands: Vec<(Seq, u32)>,
    /// In memory: commands received, to be committed.
    pub pending: Vec<(Seq, u32)>,
    /// The highest acknowledgement the site was ever told (it keeps it, and shows
    /// what is still waiting for the hub by it).
    pub acked: Seq,
    /// The connection, and the replica it reaches.
    pub conn: Option<(u32, usize)>,
    pub opened: u32,
}

/// One replica's link of one site.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    pub conn: u32,
    pub site: usize,
    /// `None` once the session ended; the link stays while a run it began commits.
    pub end: Option<HubEnd>,
    /// The run being committed (messages of event seqs).
    pub run: Option<Vec<Vec<Seq>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Replica {
    pub links: Vec<Link>,
}

/// The hub's durable store, of one site.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Stored {
    /// The site's events committed, in order.
    pub events: Vec<Seq>,
    /// The commands issued to the site (content of seq i + 1 at i).
    pub commands: Vec<u32>,
    /// How far the site said it holds the commands.
    pub site_holds: Seq,
    /// The link's claim: the newest stream of the site holds it.
    pub claim: u64,
}

impl Stored {
    fn cursor(&self) -> Seq {
        self.events.last().copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct World {
    pub bounds: Bounds,
    pub sites: Vec<Site>,
    pub replicas: Vec<Replica>,
    pub stored: Vec<Stored>,
    /// Messages in flight, kept sorted (the network is a multiset).
    pub net: Vec<Message>,
    pub next_conn: u32,
    pub site_crashes: u32,
    pub hub_crashes: u32,
    pub losses: u32,
    pub repeats: u32,
    /// Simulated time (ms); the model leaves it at 0 and takes `Tick` as "now late".
    pub now: u64,
    /// A cursor went backwards: what and where (kept for `check`).
    pub regressed: Option<String>,
}

/// One step of the world.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// A site records its next event ([`SiteInput::EventLogged`]).
    EventLogged { site: usize },
    /// A site opens a stream to a replica ([`SiteInput::Opened`]).
    Opened { site: usize, replica: usize },
    /// The network delivers a message (the receiving end's input is named by the
    /// message: `Hello`, `Events`, `CommandAck`, `Welcome`, `EventAck`, `Commands`).
    Deliver(Message),
    /// The site's store commits the commands received ([`SiteInput::CommandsCommitted`]).
    CommandsCommitted { site: usize },
    /// A replica's store commits a link's run ([`HubInput::EventsCommitted`]).
    EventsCommitted { replica: usize, conn: u32 },
    /// The hub issues the next command to a site, at a replica ([`HubInput::CommandIssued`]).
    CommandIssued { site: usize },
    /// A replica's heartbeat timer fires for a link ([`HubInput::Tick`]).
    Tick { replica: usize, conn: u32 },
    /// A site's heartbeat timer fires ([`SiteInput::Tick`]).
    SiteTick { site: usize },
    /// The connection breaks ([`SiteInput::Closed`]; the hub's session ends).
    Closed { conn: u32 },
    /// A site crashes and restarts: what was not committed is lost.
    SiteCrash { site: usize },
    /// A replica crashes and restarts: its links and uncommitted runs are lost.
    HubCrash { replica: usize },
    /// The network loses a message.
    Lose(Message),
    /// The network delivers a message twice.
    Repeat(Message),
    /// Time passes (the simulation only).
    Wait { ms: u64 },
}

impl World {
    pub fn new(bounds: Bounds) -> World {
        World {
            bounds,
            sites: (0..bounds.sites)
                .map(|_| Site {
                    end: SiteEnd::new(0, 0, bounds.limits),
                    log: 0,
                    commands: Vec::new(),
                    pending: Vec::new(),
                    acked: 0,
                    conn: None,
                    opened: 0,
                })
                .collect(),
            replicas: vec![Replica::default(); bounds.replicas],
            stored: vec![Stored::default(); bounds.sites],
            net: Vec::new(),
            next_conn: 0,
            site_crashes: 0,
            hub_crashes: 0,
            losses: 0,
            repeats: 0,
            now: 0,
            regressed: None,
        }
    }

    /// Every action possible now (the simulation picks one; the model tries all).
    pub fn actions(&self, out: &mut Vec<Action>) {
        let b = &self.bounds;
        for (i, site) in self.sites.iter().enumerate() {
            if site.log < b.events {
                out.push(Action::EventLogged { site: i });
            }
            if site.conn.is_none() && site.opened < b.connections {
                for replica in 0..b.replicas {
                    out.push(Action::Opened { site: i, replica });
                }
            }
            if !site.pending.is_empty() {
                out.push(Action::CommandsCommitted { site: i });
            }
            if (self.stored[i].commands.len() as Seq) < b.commands {
                out.push(Action::CommandIssued { site: i });
            }
            if site.conn.is_some() {
                out.push(Action::SiteTick { site: i });
            }
            if self.site_crashes < b.site_crashes {
                out.push(Action::SiteCrash { site: i });
            }
        }
        for (r, replica) in self.replicas.iter().enumerate() {
            for link in &replica.links {
                if link.run.is_some() {
                    out.push(Action::EventsCommitted {
                        replica: r,
                        conn: link.conn,
                    });
                }
                if link.end.as_ref().is_some_and(HubEnd::is_up) {
                    out.push(Action::Tick {
                        replica: r,
                        conn: link.conn,
                    });
                }
            }
            if self.hub_crashes < b.hub_crashes {
                out.push(Action::HubCrash { replica: r });
            }
        }
        let mut conns: Vec<u32> = self
            .sites
            .iter()
            .filter_map(|s| s.conn.map(|c| c.0))
            .collect();
        conns.sort_unstable();
        for conn in conns {
            out.push(Action::Closed { conn });
        }
        for (i, m) in self.net.iter().enumerate() {
            if i > 0 && self.net[i - 1] == *m {
                continue;
            }
            out.push(Action::Deliver(m.clone()));
            if self.losses < b.losses {
                out.push(Action::Lose(m.clone()));
            }
            if self.repeats < b.repeats && self.net.len() < b.in_flight {
                out.push(Action::Repeat(m.clone()));
            }
        }
    }

    /// Takes one step.
    pub fn step(&mut self, action: Action) {
        match action {
            Action::EventLogged { site } => {
                let s = &mut self.sites[site];
                s.log += 1;
                let seq = s.log;
                self.site_input(site, SiteInput::EventLogged { seq });
            }
            Action::Opened { site, replica } => {
                let conn = self.next_conn;
                self.next_conn += 1;
                let s = &mut self.sites[site];
                s.conn = Some((conn, replica));
                s.opened += 1;
                self.replicas[replica].links.push(Link {
                    conn,
                    site,
                    end: Some(HubEnd::new(self.bounds.limits.silence_ms)),
                    run: None,
                });
                let now = self.now;
                self.site_input(site, SiteInput::Opened { now });
            }
            Action::Deliver(m) => {
                self.take(&m);
                self.deliver(m);
            }
            Action::Lose(m) => {
                self.take(&m);
                self.losses += 1;
            }
            Action::Repeat(m) => {
                self.repeats += 1;
                self.deliver(m);
            }
            Action::CommandsCommitted { site } => {
                let pending = std::mem::take(&mut self.sites[site].pending);
                let s = &mut self.sites[site];
                let mut refused = None;
                for (seq, content) in pending {
                    let cursor = s.commands.len() as Seq;
                    match place(seq, cursor) {
                        Ok(Placement::Next) => s.commands.push((seq, content)),
                        // A repeat must say what the committed one says.
                        Ok(Placement::Repeat) if s.commands[seq as usize - 1].1 == content => {}
                        Ok(Placement::Repeat) => {
                            refused = Some(format!("command {seq} differs from the one committed"));
                            break;
                        }
                        Err(e) => {
                            refused = Some(e.to_string());
                            break;
                        }
                    }
                }
                let last = self.sites[site].commands.len() as Seq;
                match refused {
                    // The store refused: the session ends (the driver's error).
                    Some(_) => self.close_site(site),
                    None => self.site_input(site, SiteInput::CommandsCommitted { last }),
                }
            }
            Action::EventsCommitted { replica, conn } => self.commit_run(replica, conn),
            Action::CommandIssued { site } => {
                let stored = &mut self.stored[site];
                let seq = stored.commands.len() as u32 + 1;
                // What the command says: distinct for each seq.
                stored.commands.push(100 + seq);
                for r in 0..self.replicas.len() {
                    for conn in self.conns_of(r, site) {
                        self.hub_input(r, conn, HubInput::CommandIssued);
                    }
                }
            }
            Action::Tick { replica, conn } => {
                let now = self.now;
                self.hub_input(replica, conn, HubInput::Tick { now });
            }
            Action::SiteTick { site } => {
                let now = self.now;
                self.site_input(site, SiteInput::Tick { now });
            }
            Action::Closed { conn } => {
                if let Some(site) = self
                    .sites
                    .iter()
                    .position(|s| s.conn.map(|c| c.0) == Some(conn))
                {
                    self.close_site(site);
                }
            }
            Action::SiteCrash { site } => {
                self.site_crashes += 1;
                self.close_site(site);
                let s = &mut self.sites[site];
                s.pending.clear();
                s.end = SiteEnd::new(s.log, s.commands.len() as Seq, self.bounds.limits);
            }
            Action::HubCrash { replica } => {
                self.hub_crashes += 1;
                let links = std::mem::take(&mut self.replicas[replica].links);
                for link in links {
                    self.net.retain(|m| m.conn != link.conn);
                    if let Some(site) = self
                        .sites
                        .iter()
                        .position(|s| s.conn.map(|c| c.0) == Some(link.conn))
                    {
                        self.sites[site].conn = None;
                        self.sites[site].end.handle(SiteInput::Closed).ok();
                    }
                }
            }
            Action::Wait { ms } => self.now += ms,
        }
    }

    fn take(&mut self, m: &Message) {
        if let Some(i) = self.net.iter().position(|x| x == m) {
            self.net.remove(i);
        }
    }

    fn send(&mut self, m: Message) {
        let at = self.net.partition_point(|x| x < &m);
        self.net.insert(at, m);
    }

    fn conns_of(&self, replica: usize, site: usize) -> Vec<u32> {
        self.replicas[replica]
            .links
            .iter()
            .filter(|l| l.site == site && l.end.is_some())
            .map(|l| l.conn)
            .collect()
    }

    fn deliver(&mut self, m: Message) {
        if m.to_hub {
            let live = self.replicas[m.replica]
                .links
                .iter()
                .any(|l| l.conn == m.conn && l.end.is_some());
            if !live {
                return;
            }
            let input = match m.body {
                Body::Hello {
                    acked_command_seq,
                    last_event_seq,
                } => {
                    let stored = &self.stored[m.site];
                    HubInput::Hello {
                        acked_command_seq,
                        last_event_seq,
                        record: SiteRecord {
                            acked_event_seq: stored.cursor(),
                            last_command_seq: stored.commands.len() as Seq,
                        },
                        now: self.now,
                    }
                }
                Body::Events(seqs) => HubInput::Events { seqs },
                Body::CommandAck(seq) => HubInput::CommandAck { seq },
                Body::Heartbeat => HubInput::Heard,
                _ => unreachable!("a hub's message sent to the hub"),
            };
            let now = self.now;
            if let Some(end) = self
                .link_mut(m.replica, m.conn)
                .and_then(|l| l.end.as_mut())
            {
                end.heard(now);
            }
            self.hub_input(m.replica, m.conn, input);
        } else {
            if self.sites[m.site].conn.map(|c| c.0) != Some(m.conn) {
                return;
            }
            self.sites[m.site].end.heard(self.now);
            let input = match m.body {
                Body::Welcome(acked_event_seq) => SiteInput::Welcome { acked_event_seq },
                Body::EventAck(seq) => SiteInput::EventAck { seq },
                Body::Commands(commands) => {
                    let seqs = commands.iter().map(|c| c.0).collect();
                    self.sites[m.site].pending.extend(commands);
                    SiteInput::Commands { seqs }
                }
                Body::Heartbeat => SiteInput::Heard,
                _ => unreachable!("a site's message sent to the site"),
            };
            self.site_input(m.site, input);
        }
    }

    fn link_mut(&mut self, replica: usize, conn: u32) -> Option<&mut Link> {
        self.replicas[replica]
            .links
            .iter_mut()
            .find(|l| l.conn == conn)
    }

    /// Gives an input to a site's end and carries out its outputs.
    fn site_input(&mut self, site: usize, input: SiteInput) {
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            let outputs = match self.sites[site].end.handle(input) {
                Ok(outputs) => outputs,
                Err(_) => {
                    self.close_site(site);
                    return;
                }
            };
            let Some((conn, replica)) = self.sites[site].conn else {
                continue;
            };
            let to_hub = |body| Message {
                conn,
                to_hub: true,
                site,
                replica,
                body,
            };
            for output in outputs {
                match output {
                    SiteOutput::Hello {
                        acked_command_seq,
                        last_event_seq,
                    } => self.send(to_hub(Body::Hello {
                        acked_command_seq,
                        last_event_seq,
                    })),
                    SiteOutput::SendEvents { after, limit } => {
                        let log = self.sites[site].log;
                        let last = log.min(after + limit);
                        // (The window bounds the events in flight.)
                        if last > after {
                            self.send(to_hub(Body::Events((after + 1..=last).collect())));
                            inputs.push(SiteInput::EventsSent { last: Some(last) });
                        } else {
                            inputs.push(SiteInput::EventsSent { last: None });
                        }
                    }
                    SiteOutput::Acked { seq } => {
                        let s = &mut self.sites[site];
                        if seq < s.acked && self.regressed.is_none() {
                            self.regressed = Some(format!(
                                "site {site} was told the hub holds its events up to {seq}, after {}",
                                s.acked
                            ));
                        }
                        s.acked = s.acked.max(seq);
                    }
                    // The commands are already in `pending`.
                    SiteOutput::CommitCommands { .. } => {}
                    SiteOutput::CommandAck { seq } => self.send(to_hub(Body::CommandAck(seq))),
                    SiteOutput::Heartbeat => {
                        if self.bounds.heartbeats && self.net.len() < self.bounds.in_flight {
                            self.send(to_hub(Body::Heartbeat))
                        }
                    }
                }
            }
        }
    }

    /// Gives an input to a replica's end of a link and carries out its outputs.
    fn hub_input(&mut self, replica: usize, conn: u32, input: HubInput) {
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            let Some(link) = self.link_mut(replica, conn) else {
                return;
            };
            let site = link.site;
            let Some(end) = link.end.as_mut() else { return };
            let outputs = match end.handle(input) {
                Ok(outputs) => outputs,
                Err(_) => {
                    self.close_link(replica, conn);
                    return;
                }
            };
            let to_site = |body| Message {
                conn,
                to_hub: false,
                site,
                replica,
                body,
            };
            for output in outputs {
                let stored = &mut self.stored[site];
                match output {
                    HubOutput::AckCommands { seq } => {
                        stored.site_holds = stored.site_holds.max(seq)
                    }
                    HubOutput::Claim => {
                        stored.claim += 1;
                        inputs.push(HubInput::Claimed {
                            claim: stored.claim,
                            acked_event_seq: stored.cursor(),
                        });
                    }
                    HubOutput::Welcome { acked_event_seq } => {
                        self.send(to_site(Body::Welcome(acked_event_seq)))
                    }
                    HubOutput::CommitEvents { messages } => {
                        if let Some(link) = self.link_mut(replica, conn) {
                            link.run = Some(messages);
                        }
                    }
                    HubOutput::EventAck { seq } => self.send(to_site(Body::EventAck(seq))),
                    HubOutput::ReadCommands { after } => {
                        let per = self.bounds.commands_per_message;
                        let seqs: Vec<Seq> = (after + 1..=stored.commands.len() as Seq)
                            .take(per)
                            .collect();
                        let full = seqs.len() == per;
                        inputs.push(HubInput::CommandsRead { seqs, full });
                    }
                    HubOutput::Commands { seqs } => {
                        if self.net.len() >= self.bounds.in_flight {
                            // Flow control: the stream is full; the session ends
                            // rather than wait (the model has no blocking sends).
                            self.close_link(replica, conn);
                            return;
                        }
                        let commands = seqs
                            .iter()
                            .map(|&s| (s, self.stored[site].commands[s as usize - 1]))
                            .collect();
                        self.send(to_site(Body::Commands(commands)));
                    }
                    HubOutput::CheckClaim => inputs.push(HubInput::ClaimRead {
                        claim: stored.claim,
                    }),
                    HubOutput::Heartbeat => {
                        if self.bounds.heartbeats && self.net.len() < self.bounds.in_flight {
                            self.send(to_site(Body::Heartbeat))
                        }
                    }
                    HubOutput::Close(_) => {
                        self.close_link(replica, conn);
                        return;
                    }
                }
            }
        }
    }

    /// Commits a link's run in the hub's store: together if every message places,
    /// or else message by message up to the refused one, as the hub's ingest does.
    fn commit_run(&mut self, replica: usize, conn: u32) {
        let Some(link) = self.link_mut(replica, conn) else {
            return;
        };
        let Some(messages) = link.run.take() else {
            return;
        };
        let site = link.site;
        let mut refused = None;
        for message in &messages {
            let stored = &mut self.stored[site];
            let mut events = stored.events.clone();
            let mut error = None;
            for &seq in message {
                match place(seq, events.last().copied().unwrap_or(0)) {
                    Ok(Placement::Next) => events.push(seq),
                    Ok(Placement::Repeat) => {}
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            match error {
                None => stored.events = events,
                Some(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let acked_event_seq = self.stored[site].cursor();
        let input = match refused {
            None => HubInput::EventsCommitted { acked_event_seq },
            Some(why) => HubInput::EventsRefused {
                acked_event_seq: Some(acked_event_seq),
                why,
            },
        };
        self.hub_input(replica, conn, input);
        self.forget_closed(replica);
    }

    /// The site's side of its connection ends, and with it the stream: the hub's
    /// session ends too, and what was in flight on it is gone.
    fn close_site(&mut self, site: usize) {
        if let Some((conn, replica)) = self.sites[site].conn.take() {
            self.sites[site].end.handle(SiteInput::Closed).ok();
            self.close_link(replica, conn);
        }
    }

    /// The hub's session of a link ends (its run, if any, still commits).
    fn close_link(&mut self, replica: usize, conn: u32) {
        self.net.retain(|m| m.conn != conn);
        if let Some(link) = self.link_mut(replica, conn) {
            link.end = None;
        }
        if let Some(site) = self
            .sites
            .iter()
            .position(|s| s.conn.map(|c| c.0) == Some(conn))
        {
            self.sites[site].conn = None;
            self.sites[site].end.handle(SiteInput::Closed).ok();
        }
        self.forget_closed(replica);
    }

    fn forget_closed(&mut self, replica: usize) {
        self.replicas[replica]
            .links
            .retain(|l| l.end.is_some() || l.run.is_some());
    }

    /// The first property this state breaks, named.
    pub fn check(&self) -> Result<(), String> {
        for (i, (site, stored)) in self.sites.iter().zip(&self.stored).enumerate() {
            // No acknowledged site event is lost: what the site was told the hub
            // holds, the hub's store holds.
            if site.acked > stored.cursor() {
                return Err(format!(
                    "acknowledged event lost: site {i} was told the hub holds its events up to {}, the hub's store holds {}",
                    site.acked,
                    stored.cursor()
                ));
            }
            // No event applied twice (and none out of order).
            if let Some((at, seq)) = stored
                .events
                .iter()
                .enumerate()
                .find(|(at, seq)| **seq != *at as Seq + 1)
            {
                return Err(format!(
                    "event applied twice or out of order: the hub's store holds site {i}'s event {seq} at position {}",
                    at + 1
                ));
            }
            // Commands reach the site exactly once, in order, and only as the hub
            // committed them (a release decision is applied at the site only if
            // the hub's store holds it, saying the same).
            for (at, &(seq, content)) in site.commands.iter().enumerate() {
                if seq != at as Seq + 1 {
                    return Err(format!(
                        "command applied twice or out of order: site {i} holds command {seq} at position {}",
                        at + 1
                    ));
                }
                if stored.commands.get(at) != Some(&content) {
                    return Err(format!(
                        "command not committed at the hub: site {i} applied command {seq} ({content}), the hub's store holds {:?}",
                        stored.commands.get(at)
                    ));
                }
            }
            if stored.site_holds > site.commands.len() as Seq {
                return Err(format!(
                    "the hub notes site {i} holds its commands up to {}, the site holds {}",
                    stored.site_holds,
                    site.commands.len()
                ));
            }
        }
        if let Some(why) = &self.regressed {
            return Err(format!("cursor moved backwards: {why}"));
        }
        Ok(())
    }

    /// Whether everything recorded reached the other side (the end of a run).
    pub fn settled(&self) -> bool {
        self.sites.iter().zip(&self.stored).all(|(site, stored)| {
            stored.cursor() == site.log
                && site.acked == site.log
                && site.commands.len() == stored.commands.len()
        })
    }
}
