//! Records <-> DynamoDB items. A record's JSON form (its serde encoding, the same one every
//! backend uses) becomes native attributes, so an item reads naturally in the console: strings
//! `S`, numbers `N`, booleans `BOOL`, nested structures (dynamic config, transition, tags, step
//! timings) `M`/`L`. Decoding goes back through the same serde types, so a missing or wrong-typed
//! attribute is refused with the record type's own error, naming the item.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Number, Value};

use pgdaemon_core::StoreError;

/// Partition key: the cluster name.
pub const PK: &str = "cluster";
/// Sort key: the item name (`leader`, `member#a`, ...).
pub const SK: &str = "item";

pub type Item = HashMap<String, AttributeValue>;

pub fn key(cluster: &str, item: &str) -> Item {
    HashMap::from([(PK.to_string(), AttributeValue::S(cluster.into())), (SK.to_string(), AttributeValue::S(item.into()))])
}

/// The full item for `record` stored as `item` of `cluster`.
pub fn to_item<T: Serialize>(cluster: &str, item: &str, record: &T) -> Result<Item, StoreError> {
    let value = serde_json::to_value(record).map_err(|e| StoreError::Invalid(format!("cannot encode {item}: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(StoreError::Invalid(format!("cannot encode {item}: not a JSON object")));
    };
    let mut out = key(cluster, item);
    for (name, value) in fields {
        if name == PK || name == SK {
            // A record field must never overwrite the table's key attributes.
            return Err(StoreError::Invalid(format!("cannot encode {item}: field {name:?} is a key attribute")));
        }
        out.insert(name, to_attr(&value));
    }
    Ok(out)
}

/// Decodes an item's attributes (key attributes aside) as the record `T`.
pub fn from_item<T: DeserializeOwned>(item_name: &str, item: &Item) -> Result<T, StoreError> {
    let mut fields = Map::new();
    for (name, attr) in item {
        if name == PK || name == SK {
            continue;
        }
        fields.insert(name.clone(), from_attr(item_name, name, attr)?);
    }
    // The record contract (unknown fields ignored, newer minimum readers refused) is codec's.
    pgdaemon_core::codec::decode_value(item_name, Value::Object(fields))
}

/// The item's sort key, if it is a string.
pub fn item_name(item: &Item) -> Option<&str> {
    item.get(SK).and_then(|a| a.as_s().ok()).map(String::as_str)
}

pub fn to_attr(value: &Value) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_attr).collect()),
        Value::Object(fields) => AttributeValue::M(fields.iter().map(|(k, v)| (k.clone(), to_attr(v))).collect()),
    }
}

fn from_attr(item: &str, name: &str, attr: &AttributeValue) -> Result<Value, StoreError> {
    Ok(match attr {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => Value::Number(
            parse_number(n).ok_or_else(|| StoreError::malformed(item, format!("attribute {name:?} is not a number: {n:?}")))?,
        ),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::L(items) => Value::Array(items.iter().map(|a| from_attr(item, name, a)).collect::<Result<_, _>>()?),
        AttributeValue::M(fields) => Value::Object(
            fields.iter().map(|(k, a)| Ok((k.clone(), from_attr(item, name, a)?))).collect::<Result<_, StoreError>>()?,
        ),
        other => return Err(StoreError::malformed(item, format!("attribute {name:?} has an unsupported type: {other:?}"))),
    })
}

fn parse_number(n: &str) -> Option<Number> {
    if let Ok(u) = n.parse::<u64>() {
        return Some(u.into());
    }
    if let Ok(i) = n.parse::<i64>() {
        return Some(i.into());
    }
    n.parse::<f64>().ok().and_then(Number::from_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::{ClusterRecord, DynamicConfig, LeaderLease, MemberStatus, Role};

    #[test]
    fn records_round_trip_as_native_attributes() {
        let mut m = MemberStatus::new("a");
        m.role = Role::Replica;
        m.receive_lsn = Some("0/300".parse().unwrap());
        m.lag_seconds = Some(1.5);
        m.seq = u64::MAX;
        m.tags.priority = -3;
        let item = to_item("c1", "member#a", &m).unwrap();
        assert_eq!(item["cluster"], AttributeValue::S("c1".into()));
        assert_eq!(item["role"], AttributeValue::S("replica".into()));
        assert_eq!(item["seq"], AttributeValue::N(u64::MAX.to_string()));
        assert!(matches!(item["tags"], AttributeValue::M(_)));
        assert_eq!(from_item::<MemberStatus>("member#a", &item).unwrap(), m);

        let record = ClusterRecord::bootstrap("a", DynamicConfig::default());
        let item = to_item("c1", "cluster", &record).unwrap();
        assert!(matches!(item["config"], AttributeValue::M(_)), "nested config is a native map");
        assert_eq!(from_item::<ClusterRecord>("cluster", &item).unwrap(), record);
    }

    #[test]
    fn missing_or_wrong_typed_attributes_are_malformed() {
        let lease = LeaderLease { owner: "a".into(), term: 2, rvn: "r".into(), lease_ms: 10, released: false };
        let mut item = to_item("c", "leader", &lease).unwrap();
        item.insert("term".into(), AttributeValue::S("two".into()));
        let err = from_item::<LeaderLease>("leader", &item).unwrap_err();
        assert!(matches!(err, StoreError::Malformed { ref item, .. } if item == "leader"), "{err}");
        item.remove("term");
        assert!(matches!(from_item::<LeaderLease>("leader", &item), Err(StoreError::Malformed { .. })));
        item.insert("term".into(), AttributeValue::N("x".into()));
        assert!(matches!(from_item::<LeaderLease>("leader", &item), Err(StoreError::Malformed { .. })));
    }
}
