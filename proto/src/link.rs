//! The site link's protocol, without I/O: the two ends as plain state machines.
//!
//! The link replicates two logs, each in one direction: the site's event log up to
//! the hub, and the hub's command log for the site down to it. Both are kept the
//! same way:
//! - a record has a sequence number (seq) in its log, from 1, without gaps;
//! - the receiver keeps a *cursor*, the highest seq it has committed, and takes a
//!   record only at `cursor + 1`; one at or below the cursor is a repeat (checked
//!   equal and skipped), one beyond `cursor + 1` is a gap and refused ([`place`]);
//! - the receiver acknowledges a seq only once everything up to it is committed;
//! - after any break, the sender resumes from the cursor the receiver tells it at
//!   the start of the next session (`Hello` for commands, `Welcome` for events).
//!
//! So nothing is lost (the sender keeps every record; a record is only ever
//! forgotten as sent, never as received) and nothing is applied twice (the cursor
//! decides).
//!
//! [`SiteEnd`] and [`HubEnd`] hold what each end decides: which message to send
//! next, what to commit, when to acknowledge, what to refuse. They take inputs
//! (a message received, a commit done, a stream opened or closed, a timer fired)
//! and return outputs (send this, commit that, read the next records from the
//! store, close). They never touch a socket, a clock or a store: the real link
//! (`site-agent/src/link.rs`, `hub/src/grpc/site_link.rs`) drives them with tokio
//! and gRPC, and the model check and the simulation (`proto/tests/link_*.rs`) drive
//! the same code with a network that loses, repeats and reorders messages.
//!
//! Time enters as milliseconds given with [`SiteInput::Tick`] and [`HubInput::Tick`]
//! (any monotonic clock; the simulation's is simulated).

/// A record's position in its log (from 1).
pub type Seq = u64;

/// Where a record stands against a receiver whose cursor (highest committed seq)
/// is `cursor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// At or below the cursor: already committed; must repeat the stored record
    /// exactly, and is skipped.
    Repeat,
    /// The next one: committed now.
    Next,
}

/// Why a record cannot be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Misplaced {
    #[error("seq 0: a log starts at 1")]
    Zero,
    #[error("seq {seq} leaves a gap: everything up to {cursor} is held, the next must be {}", cursor + 1)]
    Gap { seq: Seq, cursor: Seq },
}

/// The one rule both receivers apply to every record (the hub to site events, the
/// site to hub commands).
pub fn place(seq: Seq, cursor: Seq) -> Result<Placement, Misplaced> {
    if seq == 0 {
        Err(Misplaced::Zero)
    } else if seq <= cursor {
        Ok(Placement::Repeat)
    } else if seq == cursor + 1 {
        Ok(Placement::Next)
    } else {
        Err(Misplaced::Gap { seq, cursor })
    }
}

/// Why an end closes the link. The session ends; the site dials again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Violation {
    #[error("the hub's first message was not Welcome")]
    NoWelcome,
    #[error("a second Welcome on one stream")]
    SecondWelcome,
    #[error(
        "the hub holds {hub} events of this site but the local store only {local}: \
         the local store was replaced or restored from an old backup"
    )]
    HubAhead { hub: Seq, local: Seq },
    #[error("hub acknowledged event {seq} but {acked}..={sent} was expected")]
    AckOutOfRange { seq: Seq, acked: Seq, sent: Seq },
    #[error(
        "the site says it holds command {site}, but the hub issued only {issued} commands to it; \
         the site's store does not belong to this hub's database"
    )]
    SiteAhead { site: Seq, issued: Seq },
    #[error("the first message on Sync must be Hello")]
    NoHello,
    #[error("Hello was already received on this stream")]
    SecondHello,
    #[error("nothing heard for {0} ms")]
    Silent(u64),
    #[error("a newer connection of this site took over its link (here or at another hub replica)")]
    ClaimLost,
    #[error("{0}")]
    Refused(String),
}

// ------------------------------------------------------------------ the site

/// The site's end of the link.
///
/// Outside a session it only keeps what its store holds: the highest seq of its
/// event log and of the hub's commands it has committed. A session starts with
/// [`SiteInput::Opened`] (send `Hello`), is up once the hub's `Welcome` says how
/// far it holds the site's log, and ends with [`SiteInput::Closed`] or a
/// [`Violation`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SiteEnd {
    /// The highest seq of the local event log (committed locally).
    logged: Seq,
    /// The highest hub command committed locally.
    commands: Seq,
    session: SiteSession,
    limits: Limits,
}

/// How much the site sends ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Events sent and not yet acknowledged, at most.
    pub window: Seq,
    /// Events in one message, at most.
    pub per_message: Seq,
    /// The session ends when nothing was heard for this long (ms).
    pub silence_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SiteSession {
    Closed,
    /// `Hello` sent, waiting for `Welcome`.
    Greeting {
        heard_at: u64,
    },
    Up {
        /// The hub's acknowledgement: it holds every event up to this.
        acked: Seq,
        /// Every event up to this was sent in this session.
        sent: Seq,
        /// A `SendEvents` is out and its `EventsSent` not yet back.
        reading: bool,
        /// When the hub was last heard (ms).
        heard_at: u64,
    },
}

/// What happens to the site's end.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SiteInput {
    /// A stream to the hub is open (at `now` ms).
    Opened { now: u64 },
    /// The hub's `Welcome`: it holds this site's events up to `acked_event_seq`.
    Welcome { acked_event_seq: Seq },
    /// The events asked for by [`SiteOutput::SendEvents`] are sent, up to `last`
    /// (`None`: nothing was there to send).
    EventsSent { last: Option<Seq> },
    /// The hub's `EventAck`.
    EventAck { seq: Seq },
    /// A local record was committed to the event log.
    EventLogged { seq: Seq },
    /// The hub's commands, `seqs` in the order received; to be committed.
    Commands { seqs: Vec<Seq> },
    /// The commands of the last `Commands` are committed (or were repeats), up to
    /// `last` (the store's cursor).
    CommandsCommitted { last: Seq },
    /// Any other message of the hub (a heartbeat): it was heard.
    Heard,
    /// The heartbeat timer fired at `now` ms.
    Tick { now: u64 },
    /// The stream ended, or the agent restarts.
    Closed,
}

/// What the site's end asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SiteOutput {
    /// Send `Hello`.
    Hello {
        acked_command_seq: Seq,
        last_event_seq: Seq,
    },
    /// Read at most `limit` committed events after `after` from the store and send
    /// them in one message; tell [`SiteInput::EventsSent`] what was sent.
    SendEvents { after: Seq, limit: Seq },
    /// The hub holds every event up to `seq` (for status; keep it when convenient).
    Acked { seq: Seq },
    /// Commit these hub commands, each by [`place`] against the store's cursor;
    /// then [`SiteInput::CommandsCommitted`].
    CommitCommands { seqs: Vec<Seq> },
    /// Send `CommandAck` for every command up to `seq`.
    CommandAck { seq: Seq },
    /// Send a heartbeat.
    Heartbeat,
}

impl SiteEnd {
    /// The site's end over a store whose event log ends at `logged` and which has
    /// committed the hub's commands up to `commands`.
    pub fn new(logged: Seq, commands: Seq, limits: Limits) -> SiteEnd {
        SiteEnd {
            logged,
            commands,
            session: SiteSession::Closed,
            limits,
        }
    }

    /// Whether a session is up (`Welcome` received).
    pub fn is_up(&self) -> bool {
        matches!(self.session, SiteSession::Up { .. })
    }

    /// The hub's acknowledgement in this session, once up.
    pub fn acked(&self) -> Option<Seq> {
        match self.session {
            SiteSession::Up { acked, .. } => Some(acked),
            _ => None,
        }
    }

    /// The highest seq of the local event log as this end knows it.
    pub fn logged(&self) -> Seq {
        self.logged
    }

    /// Takes one input; the outputs are to be carried out in order. A violation
    /// ends the session (the driver closes the stream).
    pub fn handle(&mut self, input: SiteInput) -> Result<Vec<SiteOutput>, Violation> {
        let mut out = Vec::new();
        match input {
            SiteInput::Opened { now } => {
                self.session = SiteSession::Greeting { heard_at: now };
                out.push(SiteOutput::Hello {
                    acked_command_seq: self.commands,
                    last_event_seq: self.logged,
                });
            }
            SiteInput::Welcome { acked_event_seq } => {
                let SiteSession::Greeting { heard_at } = self.session else {
                    return self.violation(match self.session {
                        SiteSession::Closed => return Ok(out),
                        _ => Violation::SecondWelcome,
                    });
                };
                if acked_event_seq > self.logged {
                    return self.violation(Violation::HubAhead {
                        hub: acked_event_seq,
                        local: self.logged,
                    });
                }
                self.session = SiteSession::Up {
                    acked: acked_event_seq,
                    sent: acked_event_seq,
                    reading: false,
                    heard_at,
                };
                out.push(SiteOutput::Acked {
                    seq: acked_event_seq,
                });
            }
            SiteInput::EventsSent { last } => {
                if let SiteSession::Up { sent, reading, .. } = &mut self.session {
                    *reading = false;
                    match last {
                        Some(last) => *sent = (*sent).max(last),
                        // The store had nothing after `sent`: the log ends there as
                        // far as the end knows (a later `EventLogged` says more).
                        None => self.logged = *sent,
                    }
                }
            }
            SiteInput::EventAck { seq } => match &mut self.session {
                SiteSession::Up { acked, sent, .. } => {
                    if seq > *sent || seq < *acked {
                        let (acked, sent) = (*acked, *sent);
                        return self.violation(Violation::AckOutOfRange { seq, acked, sent });
                    }
                    *acked = seq;
                    out.push(SiteOutput::Acked { seq });
                }
                SiteSession::Greeting { .. } => return self.violation(Violation::NoWelcome),
                SiteSession::Closed => {}
            },
            SiteInput::EventLogged { seq } => self.logged = self.logged.max(seq),
            SiteInput::Commands { seqs } => match self.session {
                SiteSession::Up { .. } if !seqs.is_empty() => {
                    out.push(SiteOutput::CommitCommands { seqs })
                }
                SiteSession::Greeting { .. } => return self.violation(Violation::NoWelcome),
                _ => {}
            },
            SiteInput::CommandsCommitted { last } => {
                self.commands = self.commands.max(last);
                // Acknowledged only now that they are committed: the hub may then
                // count them delivered.
                if self.is_up() {
                    out.push(SiteOutput::CommandAck { seq: last });
                }
            }
            SiteInput::Heard => {}
            SiteInput::Tick { now } => match self.session {
                SiteSession::Greeting { heard_at } | SiteSession::Up { heard_at, .. }
                    if now.saturating_sub(heard_at) > self.limits.silence_ms =>
                {
                    return self.violation(Violation::Silent(self.limits.silence_ms));
                }
                SiteSession::Up { .. } => out.push(SiteOutput::Heartbeat),
                _ => {}
            },
            SiteInput::Closed => self.session = SiteSession::Closed,
        }
        self.transmit(&mut out);
        Ok(out)
    }

    /// Notes that the hub was heard at `now` ms (any message).
    pub fn heard(&mut self, now: u64) {
        if let SiteSession::Greeting { heard_at } | SiteSession::Up { heard_at, .. } =
            &mut self.session
        {
            *heard_at = now;
        }
    }

    /// Asks for the next events, when the window and the log allow and no read is
    /// out.
    fn transmit(&mut self, out: &mut Vec<SiteOutput>) {
        if let SiteSession::Up {
            acked,
            sent,
            reading,
            ..
        } = &mut self.session
        {
            let room = self.limits.window.saturating_sub(*sent - *acked);
            if !*reading && *sent < self.logged && room > 0 {
                *reading = true;
                out.push(SiteOutput::SendEvents {
                    after: *sent,
                    limit: room.min(self.limits.per_message),
                });
            }
        }
    }

    fn violation<T>(&mut self, violation: Violation) -> Result<T, Violation> {
        self.session = SiteSession::Closed;
        Err(violation)
    }
}

// ------------------------------------------------------------------ the hub

/// What the hub's store holds of one site, as read when a session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SiteRecord {
    /// The highest seq of the site's events the hub has committed.
    pub acked_event_seq: Seq,
    /// The highest command the hub has issued (committed) to the site.
    pub last_command_seq: Seq,
}

/// The hub's end of one site's link (one per stream, at whichever replica the site
/// dialled).
///
/// A session starts with the site's `Hello`. The hub notes what the site holds of
/// its commands, claims the link (the newest stream of a site wins, across
/// replicas), and answers `Welcome` with how far it holds the site's events. Then:
/// event messages are committed one run at a time, in order, and each run is
/// acknowledged only once committed; commands are read from the store (never sent
/// from memory) and sent from where the site said it stands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubEnd {
    phase: HubPhase,
    silence_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HubPhase {
    /// Waiting for `Hello`.
    Greeting,
    /// `Hello` taken; the store is noting the site's commands and claiming the link.
    Claiming {
        sent_command_seq: Seq,
        heard_at: u64,
    },
    Up(HubSession),
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HubSession {
    claim: u64,
    /// Every command up to this was sent in this session.
    sent_command_seq: Seq,
    /// A `ReadCommands` is out.
    reading_commands: bool,
    /// The store may hold commands not yet sent.
    commands_due: bool,
    /// A run of events is being committed.
    committing: bool,
    /// Event messages received while a run commits, in order (their seqs): the
    /// next run.
    waiting: Vec<Vec<Seq>>,
    heard_at: u64,
}

/// What happens to the hub's end.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HubInput {
    /// The site's `Hello`, with what the store holds of the site.
    Hello {
        acked_command_seq: Seq,
        last_event_seq: Seq,
        record: SiteRecord,
        now: u64,
    },
    /// The store noted the site's commands and claimed the link: this stream holds
    /// claim `claim`; the store holds the site's events up to `acked_event_seq`.
    Claimed { claim: u64, acked_event_seq: Seq },
    /// A message of the site's events (their seqs, in the order sent).
    Events { seqs: Vec<Seq> },
    /// The run asked for by [`HubOutput::CommitEvents`] is committed: the store now
    /// holds the site's events up to `acked_event_seq`.
    EventsCommitted { acked_event_seq: Seq },
    /// A message of the run was refused (a gap, a changed record, a batch not the
    /// site's): what came before it is committed, up to `acked_event_seq` (`None`:
    /// nothing was).
    EventsRefused {
        acked_event_seq: Option<Seq>,
        why: String,
    },
    /// The site's `CommandAck`.
    CommandAck { seq: Seq },
    /// The commands asked for by [`HubOutput::ReadCommands`]: their seqs, in order
    /// (empty: none yet), and whether the read was cut at its limit (more may
    /// follow).
    CommandsRead { seqs: Vec<Seq>, full: bool },
    /// A command was issued to the site (here or at another replica).
    CommandIssued,
    /// The link's claim in the store, as read now.
    ClaimRead { claim: u64 },
    /// The site's heartbeat.
    Heard,
    /// The heartbeat timer fired at `now` ms.
    Tick { now: u64 },
}

/// What the hub's end asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HubOutput {
    /// Note in the store that the site holds the hub's commands up to `seq`.
    AckCommands { seq: Seq },
    /// Note the site's commands (`AckCommands` first) and claim the link in the
    /// store; then [`HubInput::Claimed`].
    Claim,
    /// Send `Welcome`.
    Welcome { acked_event_seq: Seq },
    /// Commit these messages of events, in order (together in one transaction, or
    /// one message at a time, each event by [`place`]); then
    /// [`HubInput::EventsCommitted`], or [`HubInput::EventsRefused`] once a message
    /// is refused (after acknowledging what came before it).
    CommitEvents { messages: Vec<Vec<Seq>> },
    /// Send `EventAck`.
    EventAck { seq: Seq },
    /// Read the site's commands after `after` from the store; then
    /// [`HubInput::CommandsRead`].
    ReadCommands { after: Seq },
    /// Send these commands (as read from the store).
    Commands { seqs: Vec<Seq> },
    /// Read the link's claim from the store; then [`HubInput::ClaimRead`].
    CheckClaim,
    /// Send a heartbeat.
    Heartbeat,
    /// End the session with this error (after the outputs before it).
    Close(Violation),
}

impl HubEnd {
    pub fn new(silence_ms: u64) -> HubEnd {
        HubEnd {
            phase: HubPhase::Greeting,
            silence_ms,
        }
    }

    /// Whether `Welcome` was sent and the session is live.
    pub fn is_up(&self) -> bool {
        matches!(self.phase, HubPhase::Up(_))
    }

    /// Takes one input; the outputs are to be carried out in order. A violation
    /// ends the session.
    pub fn handle(&mut self, input: HubInput) -> Result<Vec<HubOutput>, Violation> {
        let mut out = Vec::new();
        match (&mut self.phase, input) {
            (HubPhase::Closed, _) => {}
            (
                HubPhase::Greeting,
                HubInput::Hello {
                    acked_command_seq,
                    record,
                    now,
                    ..
                },
            ) => {
                if acked_command_seq > record.last_command_seq {
                    return self.violation(Violation::SiteAhead {
                        site: acked_command_seq,
                        issued: record.last_command_seq,
                    });
                }
                self.phase = HubPhase::Claiming {
                    sent_command_seq: acked_command_seq,
                    heard_at: now,
                };
                out.push(HubOutput::AckCommands {
                    seq: acked_command_seq,
                });
                out.push(HubOutput::Claim);
            }
            (HubPhase::Greeting, _) => return self.violation(Violation::NoHello),
            (HubPhase::Claiming { .. } | HubPhase::Up(_), HubInput::Hello { .. }) => {
                return self.violation(Violation::SecondHello)
            }
            (
                HubPhase::Claiming {
                    sent_command_seq,
                    heard_at,
                },
                HubInput::Claimed {
                    claim,
                    acked_event_seq,
                },
            ) => {
                let (sent_command_seq, heard_at) = (*sent_command_seq, *heard_at);
                self.phase = HubPhase::Up(HubSession {
                    claim,
                    sent_command_seq,
                    reading_commands: false,
                    commands_due: true,
                    committing: false,
                    waiting: Vec::new(),
                    heard_at,
                });
                out.push(HubOutput::Welcome { acked_event_seq });
            }
            (HubPhase::Claiming { .. }, _) => {}
            (HubPhase::Up(s), input) => match input {
                HubInput::Hello { .. } | HubInput::Claimed { .. } => {}
                HubInput::Events { seqs } => {
                    s.waiting.push(seqs);
                    if !s.committing {
                        s.committing = true;
                        out.push(HubOutput::CommitEvents {
                            messages: std::mem::take(&mut s.waiting),
                        });
                    }
                }
                HubInput::EventsCommitted { acked_event_seq } => {
                    // Acknowledged only now that the run is committed.
                    s.committing = false;
                    out.push(HubOutput::EventAck {
                        seq: acked_event_seq,
                    });
                    if !s.waiting.is_empty() {
                        s.committing = true;
                        out.push(HubOutput::CommitEvents {
                            messages: std::mem::take(&mut s.waiting),
                        });
                    }
                }
                HubInput::EventsRefused {
                    acked_event_seq,
                    why,
                } => {
                    s.committing = false;
                    if let Some(seq) = acked_event_seq {
                        out.push(HubOutput::EventAck { seq });
                    }
                    // The acknowledgement of what came before goes out first.
                    self.phase = HubPhase::Closed;
                    out.push(HubOutput::Close(Violation::Refused(why)));
                    return Ok(out);
                }
                HubInput::CommandAck { seq } => out.push(HubOutput::AckCommands { seq }),
                HubInput::CommandsRead { seqs, full } => {
                    s.reading_commands = false;
                    if let Some(&last) = seqs.last() {
                        s.sent_command_seq = last;
                        s.commands_due |= full;
                        out.push(HubOutput::Commands { seqs });
                    }
                }
                HubInput::CommandIssued => s.commands_due = true,
                HubInput::ClaimRead { claim } => {
                    if claim != s.claim {
                        return self.violation(Violation::ClaimLost);
                    }
                }
                HubInput::Heard => {}
                HubInput::Tick { now } => {
                    if now.saturating_sub(s.heard_at) > self.silence_ms {
                        return self.violation(Violation::Silent(self.silence_ms));
                    }
                    s.commands_due = true;
                    out.push(HubOutput::CheckClaim);
                    out.push(HubOutput::Heartbeat);
                }
            },
        }
        if let HubPhase::Up(s) = &mut self.phase {
            if s.commands_due && !s.reading_commands {
                s.commands_due = false;
                s.reading_commands = true;
                out.push(HubOutput::ReadCommands {
                    after: s.sent_command_seq,
                });
            }
        }
        Ok(out)
    }

    /// Notes that the site was heard at `now` ms (any message).
    pub fn heard(&mut self, now: u64) {
        if let HubPhase::Up(s) = &mut self.phase {
            s.heard_at = now;
        }
    }

    fn violation<T>(&mut self, violation: Violation) -> Result<T, Violation> {
        self.phase = HubPhase::Closed;
        Err(violation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        window: 3,
        per_message: 2,
        silence_ms: 1_000,
    };

    #[test]
    fn a_record_is_next_a_repeat_or_refused() {
        assert_eq!(place(0, 0), Err(Misplaced::Zero));
        assert_eq!(place(1, 0), Ok(Placement::Next));
        assert_eq!(place(3, 5), Ok(Placement::Repeat));
        assert_eq!(place(5, 5), Ok(Placement::Repeat));
        assert_eq!(place(7, 5), Err(Misplaced::Gap { seq: 7, cursor: 5 }));
    }

    #[test]
    fn the_site_sends_within_its_window_from_the_hubs_cursor() {
        let mut site = SiteEnd::new(10, 0, LIMITS);
        let hello = site.handle(SiteInput::Opened { now: 0 }).expect("accepted");
        assert_eq!(
            hello,
            vec![SiteOutput::Hello {
                acked_command_seq: 0,
                last_event_seq: 10
            }]
        );
        let up = site
            .handle(SiteInput::Welcome { acked_event_seq: 4 })
            .expect("accepted");
        assert_eq!(
            up,
            vec![
                SiteOutput::Acked { seq: 4 },
                SiteOutput::SendEvents { after: 4, limit: 2 }
            ]
        );
        // Two sent; one more fits the window of three.
        let more = site
            .handle(SiteInput::EventsSent { last: Some(6) })
            .expect("accepted");
        assert_eq!(more, vec![SiteOutput::SendEvents { after: 6, limit: 1 }]);
        let full = site
            .handle(SiteInput::EventsSent { last: Some(7) })
            .expect("accepted");
        assert_eq!(full, vec![], "the window is full");
        // An acknowledgement opens it again.
        let acked = site
            .handle(SiteInput::EventAck { seq: 6 })
            .expect("accepted");
        assert_eq!(
            acked,
            vec![
                SiteOutput::Acked { seq: 6 },
                SiteOutput::SendEvents { after: 7, limit: 2 }
            ]
        );
        // An acknowledgement of what was not sent, or going back, ends the session.
        let mut other = site.clone();
        assert_eq!(
            other.handle(SiteInput::EventAck { seq: 9 }),
            Err(Violation::AckOutOfRange {
                seq: 9,
                acked: 6,
                sent: 7
            })
        );
        assert!(!other.is_up());
        assert!(site.handle(SiteInput::EventAck { seq: 5 }).is_err());
    }

    #[test]
    fn the_site_refuses_a_hub_that_holds_more_than_it_logged() {
        let mut site = SiteEnd::new(3, 0, LIMITS);
        site.handle(SiteInput::Opened { now: 0 }).expect("accepted");
        assert_eq!(
            site.handle(SiteInput::Welcome { acked_event_seq: 5 }),
            Err(Violation::HubAhead { hub: 5, local: 3 })
        );
    }

    #[test]
    fn the_site_acknowledges_commands_only_once_committed() {
        let mut site = SiteEnd::new(0, 2, LIMITS);
        site.handle(SiteInput::Opened { now: 0 }).expect("accepted");
        site.handle(SiteInput::Welcome { acked_event_seq: 0 })
            .expect("accepted");
        let got = site
            .handle(SiteInput::Commands { seqs: vec![3, 4] })
            .expect("accepted");
        assert_eq!(got, vec![SiteOutput::CommitCommands { seqs: vec![3, 4] }]);
        let got = site
            .handle(SiteInput::CommandsCommitted { last: 4 })
            .expect("accepted");
        assert_eq!(got, vec![SiteOutput::CommandAck { seq: 4 }]);
    }

    #[test]
    fn the_site_closes_a_silent_link() {
        let mut site = SiteEnd::new(0, 0, LIMITS);
        site.handle(SiteInput::Opened { now: 0 }).expect("accepted");
        site.handle(SiteInput::Welcome { acked_event_seq: 0 })
            .expect("accepted");
        site.heard(500);
        assert_eq!(
            site.handle(SiteInput::Tick { now: 1_400 }),
            Ok(vec![SiteOutput::Heartbeat])
        );
        assert_eq!(
            site.handle(SiteInput::Tick { now: 1_600 }),
            Err(Violation::Silent(1_000))
        );
    }

    fn up_hub() -> HubEnd {
        let mut hub = HubEnd::new(1_000);
        let got = hub
            .handle(HubInput::Hello {
                acked_command_seq: 1,
                last_event_seq: 9,
                record: SiteRecord {
                    acked_event_seq: 4,
                    last_command_seq: 2,
                },
                now: 0,
            })
            .expect("accepted");
        assert_eq!(
            got,
            vec![HubOutput::AckCommands { seq: 1 }, HubOutput::Claim]
        );
        let got = hub
            .handle(HubInput::Claimed {
                claim: 7,
                acked_event_seq: 4,
            })
            .expect("accepted");
        assert_eq!(
            got,
            vec![
                HubOutput::Welcome { acked_event_seq: 4 },
                HubOutput::ReadCommands { after: 1 }
            ]
        );
        hub
    }

    #[test]
    fn the_hub_acknowledges_a_run_only_once_committed_and_commits_one_run_at_a_time() {
        let mut hub = up_hub();
        let got = hub
            .handle(HubInput::Events { seqs: vec![5, 6] })
            .expect("accepted");
        assert_eq!(
            got,
            vec![HubOutput::CommitEvents {
                messages: vec![vec![5, 6]]
            }]
        );
        // Two more messages while it commits: the next run, together.
        assert_eq!(hub.handle(HubInput::Events { seqs: vec![7] }), Ok(vec![]));
        assert_eq!(hub.handle(HubInput::Events { seqs: vec![8] }), Ok(vec![]));
        let got = hub
            .handle(HubInput::EventsCommitted { acked_event_seq: 6 })
            .expect("accepted");
        assert_eq!(
            got,
            vec![
                HubOutput::EventAck { seq: 6 },
                HubOutput::CommitEvents {
                    messages: vec![vec![7], vec![8]]
                }
            ]
        );
        // A refused message: what came before it is acknowledged, then the end.
        let got = hub
            .handle(HubInput::EventsRefused {
                acked_event_seq: Some(7),
                why: "event seq 8 breaks the chain".into(),
            })
            .expect("accepted");
        assert_eq!(
            got,
            vec![
                HubOutput::EventAck { seq: 7 },
                HubOutput::Close(Violation::Refused("event seq 8 breaks the chain".into()))
            ]
        );
        assert!(!hub.is_up());
    }

    #[test]
    fn the_hub_refuses_a_site_ahead_of_its_commands_and_closes_on_a_lost_claim() {
        let mut hub = HubEnd::new(1_000);
        assert_eq!(
            hub.handle(HubInput::Hello {
                acked_command_seq: 3,
                last_event_seq: 0,
                record: SiteRecord {
                    acked_event_seq: 0,
                    last_command_seq: 2,
                },
                now: 0,
            }),
            Err(Violation::SiteAhead { site: 3, issued: 2 })
        );
        let mut hub = up_hub();
        // Commands are sent as read, from where the site stands.
        let got = hub
            .handle(HubInput::CommandsRead {
                seqs: vec![2],
                full: false,
            })
            .expect("accepted");
        assert_eq!(got, vec![HubOutput::Commands { seqs: vec![2] }]);
        assert_eq!(
            hub.handle(HubInput::CommandIssued),
            Ok(vec![HubOutput::ReadCommands { after: 2 }])
        );
        assert_eq!(hub.handle(HubInput::ClaimRead { claim: 7 }), Ok(vec![]));
        assert_eq!(
            hub.handle(HubInput::ClaimRead { claim: 8 }),
            Err(Violation::ClaimLost)
        );
    }
}
