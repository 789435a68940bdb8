//! "Every acknowledged message reached an SMSC": the one count the crash, disk-full, shutdown
//! and fault tests and `otpgate bench` make, by message text (each of their messages has its
//! own).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use super::SmscSim;

/// What became of the acknowledged messages at the SMSCs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounting {
    /// Distinct texts acknowledged to clients (2xx).
    pub acknowledged: usize,
    /// Of those, the texts at least one SMSC received.
    pub reached: usize,
    /// Extra copies of any text at the SMSCs: duplicate SMS (a message the client never saw
    /// acknowledged may still be on disk and sent twice).
    pub duplicates: usize,
    /// Acknowledged texts no SMSC received, in order.
    pub lost: Vec<String>,
}

impl Accounting {
    /// `acknowledged` texts against every text the SMSCs `received`.
    pub fn of<'a>(acknowledged: impl IntoIterator<Item = &'a str>, received: impl IntoIterator<Item = &'a str>) -> Accounting {
        let mut copies: HashMap<&str, usize> = HashMap::new();
        for text in received {
            *copies.entry(text).or_default() += 1;
        }
        let acknowledged: HashSet<&str> = acknowledged.into_iter().collect();
        let mut lost: Vec<String> = acknowledged.iter().filter(|t| !copies.contains_key(*t)).map(|t| t.to_string()).collect();
        lost.sort();
        let duplicates = copies.values().map(|n| n - 1).sum();
        Accounting { acknowledged: acknowledged.len(), reached: acknowledged.len() - lost.len(), duplicates, lost }
    }

    /// The accounting now, over what `sims` received.
    pub fn at(sims: &[&SmscSim], acknowledged: &[String]) -> Accounting {
        let received: Vec<String> = sims.iter().flat_map(|s| s.stats().submits).map(|m| m.text).collect();
        Accounting::of(acknowledged.iter().map(String::as_str), received.iter().map(String::as_str))
    }

    /// Waits (at most `limit`) until every acknowledged text reached one of `sims`; the
    /// accounting then, or at the limit.
    pub async fn settle(sims: &[&SmscSim], acknowledged: &[String], limit: Duration) -> Accounting {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let now = Accounting::at(sims, acknowledged);
            if now.lost.is_empty() || tokio::time::Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn nothing_lost(&self) -> bool {
        self.lost.is_empty()
    }
}

impl fmt::Display for Accounting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "acknowledged {}, reached the SMSCs {}, duplicates {}, lost {}",
            self.acknowledged,
            self.reached,
            self.duplicates,
            self.lost.len()
        )?;
        if !self.lost.is_empty() {
            write!(f, " (e.g. {:?})", &self.lost[..self.lost.len().min(5)])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_duplicated_and_unacknowledged_texts_are_told_apart() {
        let accounting = Accounting::of(["a", "b", "c", "a"], ["a", "a", "a", "b", "x", "x"]);
        assert_eq!(accounting, Accounting { acknowledged: 3, reached: 2, duplicates: 3, lost: vec!["c".to_string()] });
        assert!(!accounting.nothing_lost());
        assert_eq!(accounting.to_string(), "acknowledged 3, reached the SMSCs 2, duplicates 3, lost 1 (e.g. [\"c\"])");
    }
}
