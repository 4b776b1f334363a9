//! People who use the hub, and what each may do.

use carrel_proto::event::{CommandKind, EventKind, HubCommand, Identity, SiteEvent};
use carrel_proto::people::{PersonStatus, SiteAction};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Physician,
    Qa,
    Technician,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Physician => "physician",
            Role::Qa => "qa",
            Role::Technician => "technician",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "physician" => Some(Role::Physician),
            "qa" => Some(Role::Qa),
            "technician" => Some(Role::Technician),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub username: String,
    pub full_name: String,
    pub role: Role,
    pub disabled: bool,
    pub password_hash: String,
    /// When they acknowledged that their electronic signature is the legally binding
    /// equivalent of their handwritten one; they sign nothing before that.
    pub signature_acknowledged_at: Option<DateTime<Utc>>,
}

/// A hospital's integration engine (its EHR's interface engine), ordering through
/// the FHIR door on behalf of the physicians an administrator named. Not a person:
/// no password, site or signature; it proves itself with a client secret (OAuth 2
/// client credentials), of which the hub keeps only the argon2 hash.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemAccount {
    /// The OAuth 2 `client_id`.
    pub client_id: String,
    /// What the engine is, for people ("St Elsewhere EHR interface engine").
    pub name: String,
    pub secret_hash: String,
    pub disabled: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// The physicians it may order for and follow the orders of, by user name.
    pub physicians: Vec<String>,
}

impl SystemAccount {
    /// How the account is named in the audit trail: never mistaken for a person.
    pub fn actor(&self) -> String {
        Self::actor_of(&self.client_id)
    }

    pub fn actor_of(client_id: &str) -> String {
        format!("system:{client_id}")
    }
}

/// A site's directory as the hub sent it (its `person_updated` commands): who could
/// act at the site at each directory version, and when the hub changed that.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteDirectory {
    entries: Vec<DirectoryEntry>,
}

/// One person's entry, as of one directory version.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryEntry {
    /// The command's seq: the directory version from which the entry holds.
    pub version: u64,
    pub issued_at: DateTime<Utc>,
    pub username: String,
    pub full_name: String,
    pub role: String,
    pub status: PersonStatus,
}

impl SiteDirectory {
    /// From the site's directory commands, in seq order (other commands are ignored).
    pub fn new(commands: &[HubCommand]) -> SiteDirectory {
        let entries = commands
            .iter()
            .filter_map(|c| match &c.kind {
                CommandKind::PersonUpdated {
                    username,
                    full_name,
                    role,
                    status,
                    ..
                } => Some(DirectoryEntry {
                    version: c.seq,
                    issued_at: c.issued_at,
                    username: username.to_lowercase(),
                    full_name: full_name.clone(),
                    role: role.clone(),
                    status: *status,
                }),
                _ => None,
            })
            .collect();
        SiteDirectory { entries }
    }

    fn of<'a>(&'a self, username: &str) -> impl Iterator<Item = &'a DirectoryEntry> + 'a {
        let username = username.to_lowercase();
        self.entries.iter().filter(move |e| e.username == username)
    }

    /// The person's entry as the site had it at `version`.
    pub fn at(&self, username: &str, version: u64) -> Option<&DirectoryEntry> {
        self.of(username).filter(|e| e.version <= version).last()
    }

    /// The person's full name, as last sent.
    pub fn full_name(&self, username: &str) -> Option<&str> {
        self.of(username).last().map(|e| e.full_name.as_str())
    }

    /// The problems with who made a site record, in words for QA (none: the people
    /// it names could make it). `bedside` says whether a scan is a bedside one;
    /// `accept_simulated`, whether this hub releases the work of a simulator's
    /// operators (dev mode and tests).
    pub fn problems(
        &self,
        event: &SiteEvent,
        bedside: bool,
        accept_simulated: bool,
    ) -> Vec<String> {
        let action = SiteAction::of(&event.kind, bedside);
        let version = match event.identity {
            Identity::Authenticated { directory_version } => directory_version,
            Identity::Simulated if accept_simulated => return Vec::new(),
            Identity::Simulated => {
                return vec![format!(
                    "made by the simulator's operator {}, not by a person: only a hub in dev mode releases such a batch",
                    event.people().join(" and ")
                )]
            }
            Identity::Agent => {
                return match event.kind {
                    EventKind::CustodyScan { .. }
                    | EventKind::Correction { .. }
                    | EventKind::LabelPrinted { .. } => vec![format!(
                        "a {} must be made by a person, and this one names none",
                        event.kind.name().replace('_', " ")
                    )],
                    _ => Vec::new(),
                }
            }
            // Counted once for the batch, as "identity not verified".
            Identity::Unverified => return Vec::new(),
        };
        let mut problems = Vec::new();
        if self
            .entries
            .last()
            .is_none_or(|last| version > last.version)
        {
            problems.push(format!(
                "the site names directory version {version}, which the hub never sent it"
            ));
            return problems;
        }
        for person in event.people() {
            let Some(entry) = self.at(person, version) else {
                problems.push(format!(
                    "{person} was not in the site's directory (version {version})"
                ));
                continue;
            };
            if entry.status != PersonStatus::Active {
                problems.push(format!(
                    "{person} was {} in the site's directory (version {version})",
                    entry.status.as_str()
                ));
            }
            if let Some(action) = action.filter(|a| !a.allows(&entry.role)) {
                problems.push(format!(
                    "{person} is a {}, who may not {}",
                    entry.role,
                    action.describe()
                ));
            }
            if let Some(later) = self.of(person).find(|e| {
                e.version > version
                    && e.issued_at <= event.recorded_at
                    && e.status != PersonStatus::Active
            }) {
                problems.push(format!(
                    "{person} was {} at the hub at {} UTC, before this record; the site had not received it yet (it was offline)",
                    later.status.as_str(),
                    later.issued_at.format("%Y-%m-%d %H:%M:%S")
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrel_proto::event::GENESIS_SHA256;
    use uuid::Uuid;

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).expect("time")
    }

    fn entry(
        seq: u64,
        minute: i64,
        username: &str,
        role: &str,
        status: PersonStatus,
    ) -> HubCommand {
        HubCommand {
            seq,
            command_id: Uuid::new_v4(),
            issued_at: at(minute),
            batch_id: Uuid::nil(),
            kind: CommandKind::PersonUpdated {
                username: username.into(),
                full_name: format!("{username} full"),
                role: role.into(),
                password_verifier: String::new(),
                status,
                badge_id: String::new(),
                pin_verifier: String::new(),
            },
        }
    }

    fn scan(minute: i64, identity: Identity, verifiers: &[&str]) -> SiteEvent {
        SiteEvent {
            seq: 9,
            event_id: Uuid::new_v4(),
            recorded_at: at(minute),
            batch_id: Uuid::new_v4(),
            recorded_by: verifiers[0].into(),
            prev_sha256: GENESIS_SHA256.into(),
            identity,
            kind: EventKind::CustodyScan {
                checkpoint_id: "receipt".into(),
                expected_coi: "X".into(),
                scanned_coi: "X".into(),
                verifiers: verifiers.iter().map(|v| v.to_string()).collect(),
                matched: true,
                location: String::new(),
                wristband: None,
            },
        }
    }

    #[test]
    fn records_are_checked_against_the_directory_version_the_site_used() {
        let directory = SiteDirectory::new(&[
            entry(3, 0, "tech.ann", "technician", PersonStatus::Active),
            entry(4, 0, "dr.bo", "physician", PersonStatus::Active),
            entry(5, 0, "qa.cy", "qa", PersonStatus::Active),
            entry(7, 30, "tech.ann", "technician", PersonStatus::Disabled),
        ]);
        let v5 = Identity::Authenticated {
            directory_version: 5,
        };
        assert!(directory
            .problems(&scan(10, v5, &["tech.ann", "qa.cy"]), false, false)
            .is_empty());
        assert_eq!(directory.full_name("TECH.ANN"), Some("tech.ann full"));

        let physician = directory.problems(&scan(10, v5, &["tech.ann", "dr.bo"]), false, false);
        assert_eq!(physician.len(), 1, "{physician:?}");
        assert!(physician[0].contains("dr.bo is a physician"));
        assert!(
            directory
                .problems(&scan(10, v5, &["tech.ann", "dr.bo"]), true, false)
                .is_empty(),
            "a physician may scan at the bedside"
        );

        let offline = directory.problems(&scan(40, v5, &["tech.ann"]), false, false);
        assert!(offline[0].contains("disabled at the hub"), "{offline:?}");
        assert!(
            directory
                .problems(&scan(20, v5, &["tech.ann"]), false, false)
                .is_empty(),
            "before the disabling it was fine"
        );

        let v7 = Identity::Authenticated {
            directory_version: 7,
        };
        assert!(
            directory.problems(&scan(40, v7, &["tech.ann"]), false, false)[0]
                .contains("was disabled in the site's directory")
        );
        assert!(
            directory.problems(&scan(40, v5, &["nobody"]), false, false)[0]
                .contains("not in the site's directory")
        );
        let v9 = Identity::Authenticated {
            directory_version: 9,
        };
        assert!(
            directory.problems(&scan(40, v9, &["tech.ann"]), false, false)[0]
                .contains("never sent")
        );
        assert!(directory.problems(
            &scan(40, Identity::Simulated, &["sim-operator-1"]),
            false,
            false
        )[0]
        .contains("simulator"));
        assert!(directory
            .problems(&scan(40, Identity::Unverified, &["anyone"]), false, false)
            .is_empty());
    }
}
