//! The write transactions of system accounts (a hospital's integration engine
//! ordering through the FHIR door for named physicians), written once for every
//! backend like those in [`super::transactions`]: checked, written and audited in
//! one transaction.

use super::backend::Tx;
use super::transactions::required_reason;
use super::{ts, Error, Result};
use crate::audit::{Action, NewEntry, Object};
use crate::model::{Role, SystemAccount};
use chrono::{DateTime, Utc};

/// A physician a system account may act for: a physician's account, not disabled.
async fn check_physician(tx: &mut Tx<'_>, username: &str) -> Result<()> {
    let user = match tx.lock_user(username).await {
        Err(Error::NotFound(_)) => {
            return Err(Error::Invalid(format!(
                "physician {username:?} is not an account of this hub"
            )))
        }
        other => other?,
    };
    if user.role != Role::Physician {
        return Err(Error::Invalid(format!(
            "{username} is a {}, not a physician: a system account orders only for physicians",
            user.role
        )));
    }
    if user.disabled {
        return Err(Error::FailedPrecondition(format!(
            "{username}'s account is disabled"
        )));
    }
    Ok(())
}

/// Audits a change of an account, commits, and answers the account as changed.
async fn audited(
    mut tx: Tx<'_>,
    client_id: &str,
    entry: NewEntry,
    now: DateTime<Utc>,
) -> Result<SystemAccount> {
    tx.audit(entry, now).await?;
    let changed = tx.system_account(client_id).await?;
    tx.commit().await?;
    Ok(changed)
}

pub(crate) async fn add_system_account(
    mut tx: Tx<'_>,
    account: &SystemAccount,
    now: DateTime<Utc>,
) -> Result<SystemAccount> {
    if account.physicians.is_empty() {
        return Err(Error::Invalid(
            "name at least one physician the system account orders for".into(),
        ));
    }
    for physician in &account.physicians {
        check_physician(&mut tx, physician).await?;
    }
    if !tx.insert_system_account(account).await? {
        return Err(Error::AlreadyExists(format!(
            "system account {:?}",
            account.client_id
        )));
    }
    audited(
        tx,
        &account.client_id,
        NewEntry::new(
            &account.created_by,
            Action::SystemAccountAdded,
            Object::SystemAccount(account.client_id.clone()),
        )
        .value(format!(
            "{}; orders for {}",
            account.name,
            account.physicians.join(", ")
        )),
        now,
    )
    .await
}

/// Puts physicians in (`add`) and takes them out of (`remove`) an account's scope.
/// A physician taken out no longer has orders placed for them, nor are their orders
/// visible to the engine, from the next request on.
pub(crate) async fn change_system_scope(
    mut tx: Tx<'_>,
    client_id: &str,
    add: &[String],
    remove: &[String],
    reason: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<SystemAccount> {
    required_reason(reason)?;
    if add.is_empty() && remove.is_empty() {
        return Err(Error::Invalid(
            "name a physician to add to or remove from the scope".into(),
        ));
    }
    if let Some(both) = add.iter().find(|p| remove.contains(p)) {
        return Err(Error::Invalid(format!(
            "{both} is both added and removed; name them once"
        )));
    }
    let account = tx.lock_system_account(client_id).await?;
    for physician in add {
        if account.physicians.contains(physician) {
            return Err(Error::FailedPrecondition(format!(
                "{physician} is already in the scope of {client_id}"
            )));
        }
        check_physician(&mut tx, physician).await?;
        tx.set_system_scope(client_id, physician, true).await?;
    }
    for physician in remove {
        if !tx.set_system_scope(client_id, physician, false).await? {
            return Err(Error::FailedPrecondition(format!(
                "{physician} is not in the scope of {client_id}"
            )));
        }
    }
    let changed = tx.system_account(client_id).await?;
    tx.audit(
        NewEntry::new(
            actor,
            Action::SystemAccountScopeChanged,
            Object::SystemAccount(client_id.to_owned()),
        )
        .change(account.physicians.join(", "), changed.physicians.join(", "))
        .reason(reason.trim()),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(changed)
}

/// Disables (its tokens end at once) or enables again a system account.
pub(crate) async fn set_system_account_disabled(
    mut tx: Tx<'_>,
    client_id: &str,
    disabled: bool,
    reason: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<SystemAccount> {
    required_reason(reason)?;
    let account = tx.lock_system_account(client_id).await?;
    if account.disabled == disabled {
        return Err(Error::FailedPrecondition(format!(
            "system account {client_id} is already {}",
            if disabled { "disabled" } else { "enabled" }
        )));
    }
    tx.set_system_account_disabled(client_id, disabled).await?;
    audited(
        tx,
        client_id,
        NewEntry::new(
            actor,
            if disabled {
                Action::SystemAccountDisabled
            } else {
                Action::SystemAccountEnabled
            },
            Object::SystemAccount(client_id.to_owned()),
        )
        .reason(reason.trim()),
        now,
    )
    .await
}

/// Replaces the client secret (given as its hash); every token issued under the old
/// one ends.
pub(crate) async fn rotate_system_secret(
    mut tx: Tx<'_>,
    client_id: &str,
    secret_hash: &str,
    reason: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<SystemAccount> {
    required_reason(reason)?;
    tx.lock_system_account(client_id).await?;
    tx.set_system_account_secret(client_id, secret_hash).await?;
    audited(
        tx,
        client_id,
        NewEntry::new(
            actor,
            Action::SystemAccountSecretRotated,
            Object::SystemAccount(client_id.to_owned()),
        )
        .reason(reason.trim()),
        now,
    )
    .await
}

/// Keeps an access token for an account that proved its secret, unless the account
/// was disabled meanwhile.
pub(crate) async fn issue_system_token(
    mut tx: Tx<'_>,
    client_id: &str,
    token_sha256: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    let account = tx.lock_system_account(client_id).await?;
    if account.disabled {
        return Err(Error::FailedPrecondition(format!(
            "system account {client_id} is disabled"
        )));
    }
    tx.insert_system_token(token_sha256, client_id, expires_at, now)
        .await?;
    tx.audit(
        NewEntry::new(
            &account.actor(),
            Action::SystemAccountTokenIssued,
            Object::SystemAccount(client_id.to_owned()),
        )
        .value(format!("token until {}", ts(expires_at))),
        now,
    )
    .await?;
    tx.commit().await
}
