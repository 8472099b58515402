//! SQLite implementation of [`super::Store`].

use super::Result;

/// SQLite-backed store.
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
}

impl SqliteStore {
    pub async fn connect(_url: &str) -> Result<Self> {
        todo!()
    }
}
