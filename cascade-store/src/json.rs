//! A JSON column type that is `jsonb` on PostgreSQL and `TEXT` on SQLite.
//!
//! Diesel's own `Jsonb` writes SQLite's binary JSONB format, which older
//! `sqlite3` shells cannot read; plain text keeps the SQLite file inspectable
//! with any tool while PostgreSQL keeps its indexable `jsonb`.

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::query_builder::QueryId;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{Json, Jsonb, SqlType};
use diesel::sqlite::{Sqlite, SqliteValue};

/// SQL type of the JSON columns (`jsonb` on PostgreSQL, `TEXT` on SQLite).
#[derive(Debug, Clone, Copy, Default, SqlType, QueryId)]
#[diesel(postgres_type(oid = 3802, array_oid = 3807))]
#[diesel(sqlite_type(name = "Text"))]
#[allow(unreachable_pub)] // `table!` puts column types in `pub` signatures; the module is private.
pub struct JsonDoc;

/// A `serde_json::Value` as stored in a [`JsonDoc`] column.
#[derive(Debug, Clone, PartialEq, AsExpression, FromSqlRow)]
#[diesel(sql_type = JsonDoc)]
pub(crate) struct JsonValue(pub(crate) serde_json::Value);

impl ToSql<JsonDoc, Pg> for JsonValue {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <serde_json::Value as ToSql<Jsonb, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<JsonDoc, Pg> for JsonValue {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        <serde_json::Value as FromSql<Jsonb, Pg>>::from_sql(value).map(JsonValue)
    }
}

impl ToSql<JsonDoc, Sqlite> for JsonValue {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        <serde_json::Value as ToSql<Json, Sqlite>>::to_sql(&self.0, out)
    }
}

impl FromSql<JsonDoc, Sqlite> for JsonValue {
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        <serde_json::Value as FromSql<Json, Sqlite>>::from_sql(value).map(JsonValue)
    }
}
