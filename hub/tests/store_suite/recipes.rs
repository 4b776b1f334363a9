//! Recipes: a published version is immutable.

use crate::fixtures::*;
use carrel_hub::store::{Error, Store};
use std::sync::Arc;

pub async fn case_recipe_versions_are_immutable(store: Arc<dyn Store>) {
    let recipe = shipped_recipe();
    store.publish_recipe(&recipe).await.expect("publish");
    store
        .publish_recipe(&recipe)
        .await
        .expect("publishing the same document again is fine");
    assert_eq!(store.list_recipes().await.expect("list").len(), 1);

    let mut changed = recipe.clone();
    changed.title = "Changed after publication".into();
    assert_refused!(
        store.publish_recipe(&changed).await,
        Error::FailedPrecondition
    );
    let stored = store.recipe(RECIPE_ID, 1).await.expect("v1");
    assert_eq!(stored.sha256, recipe.sha256());
    assert_eq!(stored.recipe.title, recipe.title);
    assert_eq!(store.list_recipes().await.expect("list").len(), 1);

    // The change is welcome as a new version.
    changed.version = 2;
    store.publish_recipe(&changed).await.expect("publish v2");
    let latest = store.latest_recipe(RECIPE_ID).await.expect("latest");
    assert_eq!(
        (latest.recipe.version, latest.sha256.as_str()),
        (2, changed.sha256().as_str())
    );
    let v1 = store.recipe(RECIPE_ID, 1).await.expect("v1");
    assert_eq!(v1.sha256, recipe.sha256());
}
