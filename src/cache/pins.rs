//! The pins a node holds: which objects stay resident, until when. Kept in
//! `<cache.dir>/pins.json` (written whole, then renamed), so that pins survive a
//! restart; merged between the nodes of a region by revision (the newest change of
//! a pin wins, a deletion included, until the pin would have expired anyway).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::pinned::Covers;

/// A deleted pin is remembered this long past its lease, so that a node that missed
/// the deletion does not bring it back.
const TOMBSTONE_GRACE: Duration = Duration::from_secs(3600);

/// One pin: a bucket and a prefix (or a list of keys), until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// Its name: renewing or deleting a pin names it.
    pub id: String,
    pub bucket: String,
    /// Every object whose key starts with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Or exactly these keys (a manifest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// The objects and their bytes when pinned (what the region reserves).
    pub objects: u64,
    pub bytes: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Unix milliseconds of this change: the newest wins.
    pub revision: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl Pin {
    pub fn covers(&self, bucket: &str, key: &str) -> bool {
        self.bucket == bucket
            && match &self.prefix {
                Some(prefix) => key.starts_with(prefix.as_str()),
                None => self.keys.iter().any(|k| k == key),
            }
    }

    pub fn live(&self, now: u64) -> bool {
        !self.deleted && self.expires_at > now
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The pins, by id, tombstones included.
pub struct PinTable {
    path: PathBuf,
    pins: Mutex<HashMap<String, Pin>>,
    /// Held while the file is written (never the table's lock: lookups ask the
    /// table on every fill).
    saving: Mutex<()>,
}

impl PinTable {
    /// The pins saved in `path` (none if it does not exist; an unreadable file is
    /// logged and set aside, never a node that cannot start).
    pub fn load(path: PathBuf) -> Self {
        let pins = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Pin>>(&bytes) {
                Ok(pins) => pins.into_iter().map(|p| (p.id.clone(), p)).collect(),
                Err(error) => {
                    tracing::error!(%error, path = %path.display(), "the pins file cannot be read; set aside, starting with no pins");
                    let _ = std::fs::rename(&path, path.with_extension("unreadable"));
                    HashMap::new()
                }
            },
            Err(_) => HashMap::new(),
        };
        Self {
            path,
            pins: Mutex::new(pins),
            saving: Mutex::new(()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pin>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every pin, tombstones included (what peers merge).
    pub fn all(&self) -> Vec<Pin> {
        let mut pins: Vec<Pin> = self.map().values().cloned().collect();
        pins.sort_by(|a, b| a.id.cmp(&b.id));
        pins
    }

    /// The pins in force.
    pub fn live(&self) -> Vec<Pin> {
        let now = unix_now();
        self.all().into_iter().filter(|p| p.live(now)).collect()
    }

    pub fn get(&self, id: &str) -> Option<Pin> {
        self.map().get(id).cloned()
    }

    /// Takes `pin` if it is newer than what the table holds under its id; saved.
    /// Whether it changed anything.
    pub fn merge(&self, mut pin: Pin) -> std::io::Result<bool> {
        if pin.deleted {
            // A tombstone needs only its id, revision and expiry.
            pin.keys = Vec::new();
            pin.prefix = None;
        }
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let (old, snapshot) = {
            let mut pins = self.map();
            if pins.get(&pin.id).is_some_and(|old| old.revision >= pin.revision) {
                return Ok(false);
            }
            let old = pins.insert(pin.id.clone(), pin.clone());
            (old, pins.clone())
        };
        if let Err(error) = self.save(&snapshot) {
            let mut pins = self.map();
            if pins.get(&pin.id).is_some_and(|now| now.revision == pin.revision) {
                match old {
                    Some(old) => pins.insert(old.id.clone(), old),
                    None => pins.remove(&pin.id),
                };
            }
            return Err(error);
        }
        Ok(true)
    }

    /// Forgets tombstones and expired pins past their grace. Whether any pin
    /// expired since the last call (its chunks are to be released).
    pub fn expire(&self, since: u64, now: u64) -> bool {
        let (expired, snapshot) = {
            let mut pins = self.map();
            let expired = pins
                .values()
                .any(|p| !p.deleted && p.expires_at > since && p.expires_at <= now);
            let before = pins.len();
            pins.retain(|_, p| p.expires_at.saturating_add(TOMBSTONE_GRACE.as_secs()) > now);
            (expired, (pins.len() != before).then(|| pins.clone()))
        };
        if let Some(snapshot) = snapshot {
            let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(error) = self.save(&snapshot) {
                tracing::warn!(%error, "saving the pins");
            }
        }
        expired
    }

    fn save(&self, pins: &HashMap<String, Pin>) -> std::io::Result<()> {
        let mut list: Vec<&Pin> = pins.values().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        let bytes = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
        let temporary = self.path.with_extension("partial");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_data()?;
        }
        std::fs::rename(&temporary, &self.path)
    }
}

impl Covers for PinTable {
    fn covers(&self, bucket: &str, key: &str) -> bool {
        let now = unix_now();
        self.map().values().any(|p| p.live(now) && p.covers(bucket, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(id: &str, revision: u64, expires_at: u64) -> Pin {
        Pin {
            id: id.into(),
            bucket: "models".into(),
            prefix: Some("llama/".into()),
            keys: Vec::new(),
            objects: 1,
            bytes: 1,
            expires_at,
            revision,
            deleted: false,
        }
    }

    #[test]
    fn the_newest_change_wins_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let table = PinTable::load(dir.path().join("pins.json"));
        let later = unix_now() + 600;
        assert!(table.merge(pin("a", 2, later)).unwrap());
        assert!(
            !table.merge(pin("a", 1, later + 10)).unwrap(),
            "an older change is ignored"
        );
        assert!(table.covers("models", "llama/w1"));
        assert!(!table.covers("models", "mistral/w1"));
        assert!(!table.covers("data", "llama/w1"));
        let reloaded = PinTable::load(dir.path().join("pins.json"));
        assert_eq!(reloaded.get("a").unwrap().revision, 2);
        let mut deleted = pin("a", 3, later);
        deleted.deleted = true;
        assert!(reloaded.merge(deleted).unwrap());
        assert!(!reloaded.covers("models", "llama/w1"), "a deleted pin covers nothing");
        assert!(reloaded.live().is_empty());
        assert_eq!(reloaded.all().len(), 1, "its tombstone stays");
    }

    #[test]
    fn an_expired_pin_covers_nothing_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let table = PinTable::load(dir.path().join("pins.json"));
        let now = unix_now();
        table.merge(pin("a", 1, now + 5)).unwrap();
        assert!(!table.expire(now, now + 1));
        assert!(table.expire(now + 1, now + 5), "expired in this interval");
        assert!(!table.expire(now + 5, now + 6), "reported once");
        assert!(table.all().len() == 1, "kept as a tombstone for a while");
        table.expire(now + 6, now + 5 + TOMBSTONE_GRACE.as_secs());
        assert!(table.all().is_empty());
    }

    #[test]
    fn an_unreadable_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pins.json"), b"{not json").unwrap();
        let table = PinTable::load(dir.path().join("pins.json"));
        assert!(table.all().is_empty());
        assert!(dir.path().join("pins.unreadable").exists());
    }
}
