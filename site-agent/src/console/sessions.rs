//! Sessions of the site console: who is signed in at this browser.
//!
//! A session is a random token in an HttpOnly, SameSite=Strict cookie, with a CSRF
//! token of its own that every form of the session carries. It ends when the person
//! signs out, or after the configured idle time without a request from them (the
//! page's own status polling does not count: a bench screen left alone goes back to
//! sign-in). Sessions live in the agent's memory: a restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie that carries the session token.
pub const COOKIE: &str = "carrel_site_session";

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub username: String,
    /// Every form of this session carries it.
    pub csrf: String,
}

pub struct Sessions {
    idle: Duration,
    inner: Mutex<HashMap<String, (Session, Instant)>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 24];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
    hex::encode(bytes)
}

/// Why a request has no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No cookie, or one this console never issued (or forgot on restart).
    None,
    /// The person was idle for longer than the idle time.
    Idle,
}

impl Sessions {
    pub fn new(idle: Duration) -> Sessions {
        Sessions {
            idle,
            inner: Mutex::new(HashMap::new()),
        }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Starts a session for a person who just signed in; returns its token.
    pub fn start(&self, username: &str) -> String {
        let token = random_hex();
        let session = Session {
            username: username.to_owned(),
            csrf: random_hex(),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let idle = self.idle;
        inner.retain(|_, (_, seen)| seen.elapsed() <= idle);
        inner.insert(token.clone(), (session, Instant::now()));
        token
    }

    /// The session of a token, which counts as activity; an idle one has ended.
    pub fn touch(&self, token: &str) -> Result<Session, Ended> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.get_mut(token) {
            None => Err(Ended::None),
            Some((_, seen)) if seen.elapsed() > self.idle => {
                inner.remove(token);
                Err(Ended::Idle)
            }
            Some((session, seen)) => {
                *seen = Instant::now();
                Ok(session.clone())
            }
        }
    }

    /// The session of a token without counting as activity (a page's own polling:
    /// a screen left alone still signs its person out); an idle one has ended.
    pub fn peek(&self, token: &str) -> Result<Session, Ended> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.get(token) {
            None => Err(Ended::None),
            Some((_, seen)) if seen.elapsed() > self.idle => Err(Ended::Idle),
            Some((session, _)) => Ok(session.clone()),
        }
    }

    /// Ends a session (sign-out, or the person may no longer act).
    pub fn end(&self, token: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.remove(token);
    }
}

/// The session token a request's `Cookie` header carries, if any.
pub fn token_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_while_used_and_ends_when_idle_or_signed_out() {
        let sessions = Sessions::new(Duration::from_millis(200));
        let token = sessions.start("tech.ann");
        let session = sessions.touch(&token).expect("fresh");
        assert_eq!(session.username, "tech.ann");
        assert_ne!(session.csrf, token, "the form token is not the cookie");
        assert_eq!(sessions.touch("forged"), Err(Ended::None));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(sessions.touch(&token), Err(Ended::Idle));
        assert_eq!(sessions.touch(&token), Err(Ended::None), "gone after");
        let other = sessions.start("tech.bob");
        assert_ne!(
            sessions.touch(&other).expect("bob").csrf,
            session.csrf,
            "a CSRF token per session"
        );
        sessions.end(&other);
        assert_eq!(sessions.touch(&other), Err(Ended::None));
    }

    #[test]
    fn the_token_is_read_from_the_cookie_header() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            "a=1; carrel_site_session=abc123; b=2"
                .parse()
                .expect("header"),
        );
        assert_eq!(token_of(&headers).as_deref(), Some("abc123"));
        assert_eq!(token_of(&axum::http::HeaderMap::new()), None);
    }
}
