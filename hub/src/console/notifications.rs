//! The Notifications page: a signed-in user reads their console notification list
//! (critical news of the orders a physician placed, there whatever they subscribed
//! to), subscribes by e-mail or webhook, sees and ends their subscriptions, and sees
//! what was sent to them with its delivery state. QA and admins see everyone's
//! notifications and requeue failed ones.

#![allow(clippy::result_large_err)]

use super::view::{page, when};
use super::{html_page, parse_uuid, refused, HubState, Page, Session};
use crate::model::notification::InboxEntry;
use crate::model::Role;
use crate::notify::service::{self, Target};
use crate::notify::{Kind, OutboxEntry, OutboxState, Subscription};
use axum::extract::{Form, Path};
use axum::response::{IntoResponse, Redirect};
use maud::{html, Markup};
use std::collections::HashMap;

/// How many of a person's console notifications the page lists.
const INBOX_SHOWN: u32 = 100;

fn oversees(session: &Session) -> bool {
    service::oversees(&session.user)
}

async fn render(
    hub: &HubState,
    session: &Session,
    notice: Option<Markup>,
    input: &HashMap<String, String>,
) -> Page {
    let inbox = hub
        .store
        .inbox(&session.user.username, INBOX_SHOWN)
        .await
        .map_err(|e| refused(e.into()))?;
    let subscriptions = service::subscriptions(hub, &session.user, false)
        .await
        .map_err(refused)?;
    let sent = service::notifications(hub, &session.user, oversees(session), None, 200)
        .await
        .map_err(refused)?;
    Ok(html_page(markup(
        session,
        &inbox,
        &subscriptions,
        &sent,
        notice,
        input,
    )))
}

pub async fn notifications(hub: HubState, session: Session) -> Page {
    render(&hub, &session, None, &HashMap::new()).await
}

/// Mark-read form: `csrf`, and `inbox_id` for one notification (all without it).
pub async fn mark_read(
    hub: HubState,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    session.check_csrf(form.get("csrf").map(String::as_str).unwrap_or(""))?;
    let one = match form.get("inbox_id").filter(|id| !id.is_empty()) {
        Some(id) => Some(parse_uuid(id)?),
        None => None,
    };
    hub.store
        .mark_inbox_read(&session.user.username, one, chrono::Utc::now())
        .await
        .map_err(|e| refused(e.into()))?;
    Ok(Redirect::to("/notifications").into_response())
}

/// Subscribe form: `kind_<name>` checkboxes, `channel`, `target`, `site`, `csrf`.
pub async fn subscribe(
    hub: HubState,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    session.check_csrf(form.get("csrf").map(String::as_str).unwrap_or(""))?;
    let kinds: Vec<String> = form
        .keys()
        .filter_map(|k| k.strip_prefix("kind_"))
        .map(str::to_owned)
        .collect();
    let target = form.get("target").cloned().unwrap_or_default();
    let target = match form.get("channel").map(String::as_str) {
        Some("webhook") => Target::Webhook(target),
        _ => Target::Email(target),
    };
    let site = form.get("site").map(String::as_str);
    let mut keep = HashMap::new();
    let notice = match service::subscribe(&hub, &session.user, &kinds, target, site).await {
        Ok((subscription, secret)) => html! {
            div.notice.ok {
                "Subscribed: " (subscription.channel.name()) " " (subscription.channel.target()) "."
                @if let Some(secret) = secret {
                    p { "The hub signs each request to this webhook with this secret. It is shown only now:" }
                    p.token data-secret { (secret) }
                }
            }
        },
        Err(crate::service::Error::Field { message, .. }) => {
            // The form comes back as it was sent, with what is wrong above it.
            keep = form;
            html! { div.notice.bad role="alert" { (message) } }
        }
        Err(e) => return Err(refused(e)),
    };
    render(&hub, &session, Some(notice), &keep).await
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn unsubscribe(
    hub: HubState,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let id = parse_uuid(&id)?;
    service::unsubscribe(&hub, &session.user, id)
        .await
        .map_err(refused)?;
    render(
        &hub,
        &session,
        Some(html! { div.notice.ok { "Subscription ended." } }),
        &HashMap::new(),
    )
    .await
}

pub async fn requeue(
    hub: HubState,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let id = parse_uuid(&id)?;
    service::requeue(&hub, &session.user, id)
        .await
        .map_err(refused)?;
    render(
        &hub,
        &session,
        Some(html! { div.notice.ok { "Notification requeued." } }),
        &HashMap::new(),
    )
    .await
}

fn state_badge(state: OutboxState) -> Markup {
    let class = match state {
        OutboxState::Pending => "awaiting_release",
        OutboxState::Delivered => "released",
        OutboxState::Failed => "rejected",
    };
    html! { span class={ "badge " (class) } data-delivery=(state.as_str()) { (state.as_str()) } }
}

/// The user's console notification list, newest first, unread ones marked.
fn inbox_markup(session: &Session, inbox: &[InboxEntry]) -> Markup {
    let csrf = &session.csrf;
    html! {
        section.card id="inbox" aria-labelledby="inbox-title" {
            h2 id="inbox-title" { "For you"
                @if session.unread > 0 { " " span.badge.rejected data-inbox-unread=(session.unread) { (session.unread) " unread" } } }
            @if session.user.role == Role::Physician {
                p.muted { "Critical news of the orders you placed (a chain-of-identity mismatch, a result out of specification, a deviation, a rejection, a cancellation, a delay, a record changed after QA's decision) always comes here, whether or not you subscribed below." }
            }
            @if inbox.is_empty() {
                p.muted { "Nothing for you yet." }
            } @else {
                @if session.unread > 0 {
                    form method="post" action="/notifications/read" {
                        input type="hidden" name="csrf" value=(csrf);
                        button.secondary type="submit" id="mark-all-read" { "Mark all as read" }
                    }
                }
                div.scroll tabindex="0" { table {
                    thead { tr { th scope="col" { "When" } th scope="col" { "What" } th scope="col" { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for n in inbox {
                            tr data-inbox=(n.kind.as_str()) data-read=(n.read_at.is_some()) {
                                td.muted { (when(n.happened_at)) }
                                td {
                                    strong { (n.kind.label()) }
                                    @if n.read_at.is_none() { " " span.badge.awaiting_release { "new" } }
                                    br; (n.summary)
                                    @if let Some(order) = n.order_id { br; a href=(format!("/orders/{order}")) { "Open the order" } }
                                }
                                td {
                                    @if n.read_at.is_none() {
                                        form method="post" action="/notifications/read" {
                                            input type="hidden" name="csrf" value=(csrf);
                                            input type="hidden" name="inbox_id" value=(n.inbox_id);
                                            button.secondary type="submit" { "Mark read" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    }
}

fn markup(
    session: &Session,
    inbox: &[InboxEntry],
    subscriptions: &[Subscription],
    sent: &[OutboxEntry],
    notice: Option<Markup>,
    input: &HashMap<String, String>,
) -> Markup {
    let csrf = &session.csrf;
    let kept = |name: &str| input.get(name).map(String::as_str).unwrap_or("");
    let body = html! {
        h1 { "Notifications" }
        @if let Some(notice) = notice { (notice) }
        (inbox_markup(session, inbox))
        section.card {
            h2 { "Subscribe" }
            form method="post" action="/notifications" {
                input type="hidden" name="csrf" value=(csrf);
                fieldset {
                    legend { "Tell me when" }
                    @for kind in Kind::ALL {
                        label style="font-weight:400" {
                            input type="checkbox" name={ "kind_" (kind.as_str()) } style="width:auto"
                                checked[input.contains_key(&format!("kind_{}", kind.as_str()))];
                            " " (kind.label())
                        }
                    }
                }
                label for="channel" { "By" }
                select id="channel" name="channel" {
                    option value="email" { "e-mail" }
                    option value="webhook" selected[kept("channel") == "webhook"] { "webhook (https POST, signed)" }
                }
                label for="target" { "E-mail address or webhook URL" }
                input id="target" name="target" required value=(kept("target"));
                label for="site" { "Only for site (optional)" }
                input id="site" name="site" value=(kept("site"));
                p { button type="submit" { "Subscribe" } }
            }
            @if session.user.role == Role::Physician {
                p.muted { "You hear only of orders you placed." }
            }
        }
        h2 { "My subscriptions" }
        @if subscriptions.is_empty() {
            p.muted { "None yet." }
        } @else {
            div.scroll tabindex="0" { table {
                thead { tr { th scope="col" { "Channel" } th scope="col" { "To" } th scope="col" { "Kinds" } th scope="col" { "Site" } th scope="col" { "Since" } th scope="col" { span.visually-hidden { "Actions" } } } }
                tbody {
                    @for s in subscriptions {
                        tr {
                            td { (s.channel.name()) }
                            td { (s.channel.target()) }
                            td { (s.kinds.iter().map(|k| k.label()).collect::<Vec<_>>().join(", ")) }
                            td { (s.site_id.as_deref().unwrap_or("all")) }
                            td.muted { (when(s.created_at)) }
                            td {
                                form method="post" action={ "/notifications/subscriptions/" (s.subscription_id) "/unsubscribe" } {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button.secondary type="submit" { "Unsubscribe" }
                                }
                            }
                        }
                    }
                }
            } }
        }
        h2 { @if oversees(session) { "Sent to everyone" } @else { "Sent to me" } }
        @if sent.is_empty() {
            p.muted { "Nothing yet." }
        } @else {
            div.scroll tabindex="0" { table {
                thead { tr { th scope="col" { "Queued" } th scope="col" { "What" } th scope="col" { "To" } th scope="col" { "State" } th scope="col" { "Attempts" } th scope="col" { "Last error" } th scope="col" { span.visually-hidden { "Actions" } } } }
                tbody {
                    @for n in sent {
                        tr data-notification=(n.notification_id) {
                            td.muted { (when(n.created_at)) }
                            td { strong { (n.kind.label()) } br; (n.summary) }
                            td { (n.owner) ": " (n.channel) " " (n.target) }
                            td {
                                (state_badge(n.state))
                                @if let Some(at) = n.delivered_at { br; span.muted { (when(at)) } }
                                @if n.state == OutboxState::Pending && n.attempts > 0 { br; span.muted { "next try " (when(n.next_attempt_at)) } }
                            }
                            td { (n.attempts) }
                            td.muted { (n.last_error.as_deref().unwrap_or("")) }
                            td {
                                @if n.state == OutboxState::Failed && oversees(session) {
                                    form method="post" action={ "/notifications/outbox/" (n.notification_id) "/requeue" } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button type="submit" { "Requeue" }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
        }
    };
    page("Notifications", Some(session), body)
}
