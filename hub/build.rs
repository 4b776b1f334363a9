//! The hub embeds its SQL migrations at compile time (`sqlx::migrate!`). Cargo
//! does not know the macro reads them, so without this a migration added or
//! edited would not rebuild the hub, and a stale binary would run the old schema.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
