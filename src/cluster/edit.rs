//! Reading the fleet's document and writing it: seeding, `veer cluster push`, and the
//! compare-and-swap edit (fenced by the leader key when the leader writes progress).

use super::store::{Compare, Op};
use super::{document, Fleet, FleetError, Revision, CAS_TRIES};
use crate::config::writeback::WritebackError;
use crate::config::{Config, ConfigErrors};
use std::sync::atomic::Ordering;

impl Fleet {
    /// The document as the store holds it now (`None`: not seeded).
    pub async fn read_document(&self) -> Result<Option<Revision>, FleetError> {
        let r = self.store.get(&self.config_key(), false).await?;
        Ok(r.kvs.into_iter().next().map(|kv| Revision {
            revision: kv.mod_revision,
            text: String::from_utf8_lossy(&kv.value).into_owned(),
        }))
    }

    /// Seed the document with `text` if the store has none (create-if-absent); the document
    /// the store holds afterwards, either way.
    pub async fn seed(&self, text: &str) -> Result<Revision, FleetError> {
        let key = self.config_key();
        let r = self
            .store
            .txn(
                vec![Compare::CreateRevision(key.clone(), 0)],
                vec![Op::Put {
                    key,
                    value: text.as_bytes().to_vec(),
                    lease: 0,
                }],
            )
            .await?;
        if r.succeeded {
            tracing::info!(prefix = %self.prefix, revision = r.revision, "fleet document seeded from this replica's file");
        }
        self.read_document().await?.ok_or(FleetError::NoDocument)
    }

    /// Replace the document with `text` (`veer cluster push`), validated first.
    pub async fn push(&self, text: &str) -> Result<i64, FleetError> {
        document::parse(&self.doc_name(), text).map_err(FleetError::Invalid)?;
        let key = self.config_key();
        let r = self
            .store
            .txn(
                vec![],
                vec![Op::Put {
                    key,
                    value: text.as_bytes().to_vec(),
                    lease: 0,
                }],
            )
            .await?;
        Ok(r.revision)
    }

    /// Edit the document with `edit` (toml_edit, comments kept) as a compare-and-swap on its
    /// mod revision; a conflict retries on the fresh revision. With `fenced`, the write also
    /// requires this replica to still hold the leader key it took, so a deposed leader that
    /// wakes up late writes nothing. The new revision, its text and its config.
    pub async fn edit_document(
        &self,
        edit: &(dyn Fn(&mut toml_edit::DocumentMut) -> Result<(), WritebackError> + Send + Sync),
        fenced: bool,
    ) -> Result<(Revision, Config), FleetError> {
        let key = self.config_key();
        for _ in 0..CAS_TRIES {
            let fence = if fenced { Some(self.fence()?) } else { None };
            let cur = self.read_document().await?.ok_or(FleetError::NoDocument)?;
            let mut doc: toml_edit::DocumentMut = match cur.text.parse() {
                Ok(d) => d,
                Err(_) => {
                    let e = document::parse(&self.doc_name(), &cur.text)
                        .err()
                        .unwrap_or_else(|| ConfigErrors(Vec::new()));
                    return Err(FleetError::DocumentInvalid(e));
                }
            };
            match edit(&mut doc) {
                Ok(()) => {}
                Err(WritebackError::Invalid(e)) => return Err(FleetError::Invalid(e)),
                Err(e) => return Err(FleetError::Edit(e.to_string())),
            }
            let text = doc.to_string();
            let config = match document::parse(&self.doc_name(), &text) {
                Ok(c) => c,
                Err(e) => {
                    return Err(match document::parse(&self.doc_name(), &cur.text) {
                        Ok(_) => FleetError::Invalid(e),
                        Err(old) => FleetError::DocumentInvalid(old),
                    })
                }
            };
            if text == cur.text {
                return Ok((cur, config));
            }
            let mut compares = vec![Compare::ModRevision(key.clone(), cur.revision)];
            if let Some((leader_key, rev)) = fence {
                compares.push(Compare::CreateRevision(leader_key.clone(), rev));
                compares.push(Compare::Value(leader_key, self.node.as_bytes().to_vec()));
            }
            let r = self
                .store
                .txn(
                    compares,
                    vec![Op::Put {
                        key: key.clone(),
                        value: text.as_bytes().to_vec(),
                        lease: 0,
                    }],
                )
                .await?;
            if r.succeeded {
                return Ok((
                    Revision {
                        revision: r.revision,
                        text,
                    },
                    config,
                ));
            }
            if fenced && !self.still_leader().await? {
                return Err(FleetError::NotLeader);
            }
            // Someone else wrote first: edit their revision.
        }
        Err(FleetError::Busy)
    }

    fn fence(&self) -> Result<(String, i64), FleetError> {
        let rev = self.leader_rev.load(Ordering::Acquire);
        if !self.is_leader() || rev == 0 {
            return Err(FleetError::NotLeader);
        }
        Ok((self.leader_key(), rev))
    }

    async fn still_leader(&self) -> Result<bool, FleetError> {
        let r = self.store.get(&self.leader_key(), false).await?;
        let rev = self.leader_rev.load(Ordering::Acquire);
        let ok = r
            .kvs
            .first()
            .is_some_and(|kv| kv.create_revision == rev && kv.value == self.node.as_bytes());
        if !ok {
            self.step_down("the leader key is no longer this replica's");
        }
        Ok(ok)
    }
}
