//! The live site links of this process, and how a site's link is woken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The live site links of this process: at most one per site.
#[derive(Default)]
pub struct Links {
    inner: Mutex<LinksInner>,
}

#[derive(Default)]
struct LinksInner {
    next_generation: u64,
    live: HashMap<String, (u64, CancellationToken)>,
    notifiers: HashMap<String, Arc<Notify>>,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinksInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new live link for a site, closing the one it replaces.
    pub fn take_over(&self, site_id: &str) -> (u64, CancellationToken) {
        let mut inner = self.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let token = CancellationToken::new();
        if let Some((_, old)) = inner
            .live
            .insert(site_id.to_owned(), (generation, token.clone()))
        {
            old.cancel();
        }
        (generation, token)
    }

    /// Removes a link when it ends, unless a newer one has replaced it.
    pub fn release(&self, site_id: &str, generation: u64) {
        let mut inner = self.lock();
        if inner.live.get(site_id).map(|(g, _)| *g) == Some(generation) {
            inner.live.remove(site_id);
        }
    }

    /// Closes the site's live link, if any (suspension).
    pub fn close(&self, site_id: &str) {
        if let Some((_, token)) = self.lock().live.remove(site_id) {
            token.cancel();
        }
    }

    pub fn is_connected(&self, site_id: &str) -> bool {
        self.lock().live.contains_key(site_id)
    }

    pub fn notifier(&self, site_id: &str) -> Arc<Notify> {
        self.lock()
            .notifiers
            .entry(site_id.to_owned())
            .or_default()
            .clone()
    }
}
