//! Who is at the site: people sign in against the site's copy of the hub's directory
//! (sent by the hub as `PersonUpdated` commands), offline if need be.
//!
//! A password is checked against the argon2id verifier the hub sent; no password is
//! stored or sent. At the bedside a person may sign in with the badge the hub issued
//! (the scanner types its barcode where the user name goes) and its PIN instead. Failed sign-ins count per person; the failure that reaches the
//! configured limit locks the person at this site and records it (the hub audits it)
//! until the hub sends their entry again. Every record a person makes names them and
//! the directory version it was checked against ([`SignedIn::by`]), and each action
//! checks them again ([`current`]), so a person disabled at the hub is refused as soon
//! as the site has the change.

use crate::store::{self, By, Person, Store};
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use carrel_proto::people::{PersonStatus, SiteAction};

/// A person checked against the directory for what they do now.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedIn {
    pub username: String,
    pub full_name: String,
    pub role: String,
    /// The site's directory version when they were checked.
    pub directory_version: u64,
}

impl SignedIn {
    /// How a record they make names them.
    pub fn by(&self) -> By {
        By::person(&self.username, self.directory_version)
    }
}

/// Why a person may not act: each says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no one called {0:?} works at this site, and no badge of that name is known here: check the user name (or scan the badge again); the hub's admin assigns people to sites")]
    Unknown(String),
    #[error("the user name is required")]
    NoUserName,
    #[error("wrong {secret} for {username}; {left} more failed attempt(s) lock them at this site")]
    WrongPassword {
        username: String,
        /// "password", or "PIN" for a badge.
        secret: &'static str,
        left: u32,
    },
    #[error("{0} is locked at this site after too many failed sign-ins; ask the hub's admin to unlock them (carrel-hub user assign)")]
    Locked(String),
    #[error("{0} is disabled at the hub and may not record anything")]
    Disabled(String),
    #[error("{0} no longer works at this site (removed at the hub)")]
    Removed(String),
    #[error("{username} is a {role}; a {role} may not {action} (that needs: {roles})")]
    NotAllowed {
        username: String,
        role: String,
        action: &'static str,
        roles: String,
    },
    #[error("{0} is named twice: the second person must be someone else, signing in with their own credentials")]
    SamePerson(String),
    #[error(transparent)]
    Store(#[from] store::Error),
}

fn standing(person: &Person) -> Result<(), Refused> {
    if person.locked_at.is_some() {
        return Err(Refused::Locked(person.username.clone()));
    }
    match person.status {
        PersonStatus::Active => Ok(()),
        PersonStatus::Disabled => Err(Refused::Disabled(person.username.clone())),
        PersonStatus::Removed => Err(Refused::Removed(person.username.clone())),
    }
}

async fn find(store: &Store, username: &str) -> Result<Person, Refused> {
    let username = username.trim();
    if username.is_empty() {
        return Err(Refused::NoUserName);
    }
    store
        .person(username)
        .await?
        .ok_or_else(|| Refused::Unknown(username.to_owned()))
}

async fn signed_in(store: &Store, person: Person) -> Result<SignedIn, Refused> {
    Ok(SignedIn {
        directory_version: store.directory_version().await?,
        username: person.username,
        full_name: person.full_name,
        role: person.role,
    })
}

/// Checks a person's credentials against the directory: a user name and password,
/// or a badge (as the scanner typed it, in place of the user name) and its PIN. A
/// wrong secret counts towards their lock (and the failure that reaches
/// `lock_after` locks them).
pub async fn sign_in(
    store: &Store,
    who: &str,
    secret: &str,
    lock_after: u32,
) -> Result<SignedIn, Refused> {
    let (person, by_badge) = match find(store, who).await {
        Ok(person) => (person, false),
        Err(Refused::Unknown(name)) => match store.person_by_badge(who).await? {
            Some(person) => (person, true),
            None => return Err(Refused::Unknown(name)),
        },
        Err(other) => return Err(other),
    };
    if person.locked_at.is_some() {
        return Err(Refused::Locked(person.username));
    }
    let verifier = if by_badge {
        person.pin_verifier.clone()
    } else {
        person.password_verifier.clone()
    };
    let password = secret.trim_end_matches(['\r', '\n']).to_owned();
    // argon2 takes tens of milliseconds of CPU: off the async threads.
    let matches = tokio::task::spawn_blocking(move || match PasswordHash::new(&verifier) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    })
    .await
    .unwrap_or(false);
    if !matches {
        let failed = store.sign_in_failed(&person.username, lock_after).await?;
        if failed.failures >= lock_after {
            if failed.locked_now {
                tracing::warn!(username = %person.username, failures = failed.failures, "person locked at this site after failed sign-ins");
            }
            return Err(Refused::Locked(person.username));
        }
        return Err(Refused::WrongPassword {
            username: person.username,
            secret: if by_badge { "PIN" } else { "password" },
            left: lock_after - failed.failures,
        });
    }
    standing(&person)?;
    store.sign_in_succeeded(&person.username).await?;
    signed_in(store, person).await
}

/// Checks again, as the directory stands now, a person who signed in earlier.
pub async fn current(store: &Store, username: &str) -> Result<SignedIn, Refused> {
    let person = find(store, username).await?;
    standing(&person)?;
    signed_in(store, person).await
}

/// Whether the person's role may do `action`.
pub fn authorize(person: &SignedIn, action: SiteAction) -> Result<(), Refused> {
    if action.allows(&person.role) {
        Ok(())
    } else {
        Err(Refused::NotAllowed {
            username: person.username.clone(),
            role: person.role.clone(),
            action: action.describe(),
            roles: action.roles().join(", "),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    use carrel_proto::event::{CommandKind, EventKind, HubCommand};
    use chrono::Utc;
    use uuid::Uuid;

    pub(crate) fn verifier(password: &str) -> String {
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
            .expect("hash")
            .to_string()
    }

    pub(crate) fn person_command(
        seq: u64,
        username: &str,
        role: &str,
        status: PersonStatus,
        verifier: &str,
    ) -> HubCommand {
        HubCommand {
            seq,
            command_id: Uuid::new_v4(),
            issued_at: Utc::now(),
            batch_id: Uuid::nil(),
            kind: CommandKind::PersonUpdated {
                username: username.into(),
                full_name: format!("{username} (full name)"),
                role: role.into(),
                password_verifier: verifier.into(),
                status,
                badge_id: String::new(),
                pin_verifier: String::new(),
            },
        }
    }

    #[tokio::test]
    async fn a_person_signs_in_is_refused_when_disabled_and_locks_after_failures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("site.db"))
            .await
            .expect("open");
        let v = verifier("correct horse battery");
        store
            .apply_command(&person_command(
                1,
                "Tech.Ann",
                "technician",
                PersonStatus::Active,
                &v,
            ))
            .await
            .expect("apply");
        let ann = sign_in(&store, "tech.ann", "correct horse battery", 3)
            .await
            .expect("signs in, any case");
        assert_eq!(ann.directory_version, 1);
        assert_eq!(ann.by().name, "tech.ann");
        assert!(matches!(
            sign_in(&store, "nobody", "x", 3).await,
            Err(Refused::Unknown(_))
        ));
        assert!(authorize(&ann, SiteAction::QcResult).is_ok());

        for left in [2, 1] {
            match sign_in(&store, "tech.ann", "wrong", 3).await {
                Err(Refused::WrongPassword { left: l, .. }) => assert_eq!(l, left),
                other => panic!("expected a wrong password, got {other:?}"),
            }
        }
        assert!(matches!(
            sign_in(&store, "tech.ann", "wrong", 3).await,
            Err(Refused::Locked(_))
        ));
        assert!(
            matches!(
                sign_in(&store, "tech.ann", "correct horse battery", 3).await,
                Err(Refused::Locked(_))
            ),
            "locked even with the right password"
        );
        let locks: Vec<_> = store
            .events_after(0, 10)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| matches!(e.kind, EventKind::PersonLocked { .. }))
            .collect();
        assert_eq!(locks.len(), 1, "the lock is recorded once");
        assert!(locks[0].is_site_wide());

        // The hub re-sends the entry: unlocked. Then disabled: refused on the next action.
        store
            .apply_command(&person_command(
                2,
                "tech.ann",
                "technician",
                PersonStatus::Active,
                &v,
            ))
            .await
            .expect("apply");
        assert!(current(&store, "tech.ann").await.is_ok());
        store
            .apply_command(&person_command(
                3,
                "tech.ann",
                "technician",
                PersonStatus::Disabled,
                &v,
            ))
            .await
            .expect("apply");
        assert!(matches!(
            current(&store, "tech.ann").await,
            Err(Refused::Disabled(_))
        ));
        assert!(matches!(
            sign_in(&store, "tech.ann", "correct horse battery", 3).await,
            Err(Refused::Disabled(_))
        ));
    }

    #[tokio::test]
    async fn a_badge_signs_in_with_its_pin_and_a_wrong_pin_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("site.db"))
            .await
            .expect("open");
        let mut command = person_command(
            1,
            "nurse.ida",
            "technician",
            PersonStatus::Active,
            &verifier("her long password"),
        );
        if let CommandKind::PersonUpdated {
            badge_id,
            pin_verifier,
            ..
        } = &mut command.kind
        {
            *badge_id = "BDG-0123456789AB".into();
            *pin_verifier = verifier("314159");
        }
        store.apply_command(&command).await.expect("apply");
        let ida = sign_in(&store, "bdg-0123456789ab\r", "314159", 5)
            .await
            .expect("the badge as scanned, with its PIN");
        assert_eq!(ida.username, "nurse.ida");
        match sign_in(&store, "BDG-0123456789AB", "000000", 5).await {
            Err(Refused::WrongPassword { secret, left, .. }) => {
                assert_eq!((secret, left), ("PIN", 4))
            }
            other => panic!("expected a wrong PIN, got {other:?}"),
        }
        assert!(
            matches!(
                sign_in(&store, "BDG-0123456789AB", "her long password", 5).await,
                Err(Refused::WrongPassword { .. })
            ),
            "a badge takes its PIN, not the password"
        );
        assert!(matches!(
            sign_in(&store, "BDG-FFFFFFFFFFFF", "314159", 5).await,
            Err(Refused::Unknown(_))
        ));
    }
}
