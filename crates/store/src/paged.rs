//! Reading a whole table in time order, page by page: what `ccrelay export` and `ccrelay replay`
//! read ([`Queries::export_messages`](crate::Queries::export_messages) and its siblings).
//!
//! A page is *keyset*-paginated: it holds the rows with `since <= created_at < until` (of one
//! tenant, or all) in `(created_at, id)` order that come after the last row of the previous page,
//! `id` being the table's own insertion-order key (ties of `created_at`). Each page is one index
//! range read of at most `limit` rows, however far into the table it is, so reading page after
//! page keeps memory and the cost of each page constant over any number of rows — unlike
//! `OFFSET`, which rereads everything before it.

use time::OffsetDateTime;

/// Where a row stands in an export's order: its `created_at`, then its table's `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExportKey {
    pub at: OffsetDateTime,
    /// The table's insertion-order key (`INTEGER PRIMARY KEY` / identity); internal to the store,
    /// never exported.
    pub id: i64,
}

/// A row of an export page, with its [`ExportKey`].
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed<T> {
    pub key: ExportKey,
    pub row: T,
}

/// One page of an export: rows with `created_at < until` (of one tenant, or all), in
/// `(created_at, id)` order, strictly after `after`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportPage {
    pub until: OffsetDateTime,
    /// Only this tenant's (or Tencent app's) rows.
    pub tenant: Option<String>,
    /// The key of the last row of the previous page; `(since, i64::MIN)` at first, so that the
    /// first page starts at `since` inclusive.
    pub after: ExportKey,
    pub limit: i64,
}

impl ExportPage {
    /// The first page of `since <= created_at < until`.
    pub fn first(
        since: OffsetDateTime,
        until: OffsetDateTime,
        tenant: Option<String>,
        limit: i64,
    ) -> Self {
        ExportPage {
            until,
            tenant,
            after: ExportKey {
                at: since,
                id: i64::MIN,
            },
            limit,
        }
    }

    /// The page after the one whose last row had `key`.
    pub fn next(&mut self, key: ExportKey) {
        self.after = key;
    }
}
