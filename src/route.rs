//! Routes: which carriers may carry a destination, in which order for this message.
//!
//! A route is chosen by the longest matching E.164 prefix (`"*"` matches everything). It is asked
//! for an order at *dispatch* time, for every attempt, so a message queued while its first
//! carrier was up still goes to the best carrier that is up when it is sent. Without any
//! `[[routes]]`, one catch-all route fails over through the carriers in config order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use crate::echo::shown;
use crate::smpp::Carrier;

/// How a route spreads messages over its carriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The first usable carrier in the list, the next ones only when it is not.
    Failover,
    /// Each message starts at the next carrier in turn.
    RoundRobin,
    /// Shares proportional to `weights`.
    Weighted,
}

/// Which carriers serve which destinations. Longest prefix wins; `"*"` catches the rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefixes: Vec<String>,
    pub carriers: Vec<String>,
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    #[serde(default)]
    pub weights: Vec<u32>,
    /// The sender of this route's messages that name none, on every carrier of the route ...
    #[serde(default)]
    pub from: Option<String>,
    /// ... or on one carrier (a short code on one, a registered long number on another).
    #[serde(default)]
    pub from_by_carrier: std::collections::BTreeMap<String, String>,
    /// The senders a request may name for these destinations: `"any"` (the default) or a list.
    #[serde(default)]
    pub allowed_from: AllowedFrom,
}

/// Which senders a request may name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AllowedFrom {
    #[default]
    #[serde(skip)]
    Any,
    /// `"any"` as written.
    Word(String),
    List(Vec<String>),
}

impl AllowedFrom {
    /// The list, or `None` for any sender.
    pub fn list(&self) -> Option<&[String]> {
        match self {
            AllowedFrom::List(list) => Some(list),
            AllowedFrom::Any | AllowedFrom::Word(_) => None,
        }
    }
}

impl RouteConfig {
    /// The first problem with this route on its own: (field, why). Whether its carriers exist
    /// is checked with the whole file.
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if self.prefixes.is_empty() {
            return Some(("prefixes", "list at least one E.164 prefix (or \"*\")".into()));
        }
        for prefix in &self.prefixes {
            let ok = prefix == "*" || (prefix.len() >= 2 && prefix.starts_with('+') && prefix[1..].bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                return Some(("prefixes", format!("{} is neither \"*\" nor '+' followed by digits", shown(prefix))));
            }
        }
        if self.carriers.is_empty() {
            return Some(("carriers", "list at least one carrier".into()));
        }
        let sender = |from: &str| crate::smpp::address::Address::source(from).err().map(|e| format!("{}: {e}", shown(from)));
        if let Some(e) = self.from.as_deref().and_then(sender) {
            return Some(("from", e));
        }
        for (carrier, from) in &self.from_by_carrier {
            if !self.carriers.contains(carrier) {
                return Some(("from_by_carrier", format!("{} is not a carrier of this route", shown(carrier))));
            }
            if let Some(e) = sender(from) {
                return Some(("from_by_carrier", e));
            }
        }
        match &self.allowed_from {
            AllowedFrom::Word(word) if word != "any" => {
                return Some(("allowed_from", format!("is \"any\" or a list of senders, not {}", shown(word))));
            }
            AllowedFrom::List(list) if list.is_empty() || list.len() > 100 => {
                return Some(("allowed_from", "lists 1-100 senders (or write \"any\")".into()));
            }
            AllowedFrom::List(list) => {
                if let Some(e) = list.iter().find_map(|f| sender(f)) {
                    return Some(("allowed_from", e));
                }
            }
            _ => {}
        }
        match self.strategy {
            Strategy::Weighted if self.weights.len() != self.carriers.len() => {
                Some(("weights", format!("has {} weights for {} carriers", self.weights.len(), self.carriers.len())))
            }
            Strategy::Weighted if self.weights.iter().all(|&w| w == 0) || self.weights.iter().sum::<u32>() > 1000 => {
                Some(("weights", "weights must add up to 1-1000".into()))
            }
            Strategy::Weighted => None,
            _ if !self.weights.is_empty() => Some(("weights", "weights only go with strategy = \"weighted\"".into())),
            _ => None,
        }
    }
}

fn default_strategy() -> Strategy {
    Strategy::Failover
}

/// One route's carriers and how to spread over them.
pub struct Route {
    carriers: Vec<Arc<Carrier>>,
    strategy: Strategy,
    /// The sender per carrier name for messages that name none (`from`, `from_by_carrier`).
    senders: std::collections::HashMap<String, String>,
    /// The senders a request may name (`None`: any).
    allowed_from: Option<Vec<String>>,
    /// For `weighted`: one smooth weighted round-robin cycle of carrier indexes.
    cycle: Vec<usize>,
    turn: AtomicU64,
}

impl Route {
    fn new(carriers: Vec<Arc<Carrier>>, config: Option<&RouteConfig>) -> Route {
        let strategy = config.map_or(Strategy::Failover, |c| c.strategy);
        let cycle = match (strategy, config) {
            (Strategy::Weighted, Some(config)) => smooth_cycle(&config.weights),
            _ => Vec::new(),
        };
        let senders = carriers
            .iter()
            .filter_map(|c| {
                let config = config?;
                let from = config.from_by_carrier.get(c.name()).or(config.from.as_ref())?;
                Some((c.name().to_string(), from.clone()))
            })
            .collect();
        let allowed_from = config.and_then(|c| c.allowed_from.list().map(<[String]>::to_vec));
        Route { carriers, strategy, senders, allowed_from, cycle, turn: AtomicU64::new(0) }
    }

    /// The sender of a message that names none, on `carrier` (`None`: the carrier's `source_addr`).
    pub fn sender_on(&self, carrier: &str) -> Option<&str> {
        self.senders.get(carrier).map(String::as_str)
    }

    /// The registration fields a message needs to go through whichever carrier of the route
    /// sends it.
    pub fn needs(&self) -> Vec<crate::smpp::tlv::Field> {
        let mut fields: Vec<_> = self.carriers.iter().flat_map(|c| c.config().required_fields()).collect();
        fields.sort();
        fields.dedup();
        fields
    }

    /// Whether a request may name `from` as its sender here; `Err` lists the allowed ones.
    pub fn allows(&self, from: &str) -> Result<(), &[String]> {
        match &self.allowed_from {
            Some(list) if !list.iter().any(|allowed| allowed == from) => Err(list),
            _ => Ok(()),
        }
    }

    /// The carriers to try for one attempt, best first: the strategy picks the first, the rest
    /// follow in list order as fallbacks.
    pub fn order(&self) -> Vec<Arc<Carrier>> {
        let n = self.carriers.len();
        let first = match self.strategy {
            Strategy::Failover => 0,
            Strategy::RoundRobin => (self.turn.fetch_add(1, Ordering::Relaxed) % n as u64) as usize,
            Strategy::Weighted => {
                let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
                self.cycle.get(turn % self.cycle.len().max(1)).copied().unwrap_or(0)
            }
        };
        let mut order = Vec::with_capacity(n);
        order.push(self.carriers[first].clone());
        order.extend(self.carriers.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, c)| c.clone()));
        order
    }

    pub fn carriers(&self) -> &[Arc<Carrier>] {
        &self.carriers
    }
}

/// nginx's smooth weighted round robin, unrolled over one cycle: weights 3,1 give 0,0,1,0 —
/// proportional shares without long runs on one carrier.
fn smooth_cycle(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, &w) in current.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let best = (0..weights.len()).max_by_key(|&i| (current[i], -(i as i64))).unwrap_or(0);
            current[best] -= total;
            best
        })
        .collect()
}

/// All routes, by prefix.
pub struct Routes {
    /// (prefix without '+', route), longest prefix first; `"*"` is the empty prefix, last.
    by_prefix: Vec<(String, Arc<Route>)>,
}

impl Routes {
    /// Builds the table; carriers named in config that are missing (validation prevents it) are
    /// left out of their route.
    pub fn new(routes: &[RouteConfig], carriers: &[Arc<Carrier>]) -> Routes {
        let mut by_prefix = Vec::new();
        if routes.is_empty() {
            let all = Arc::new(Route::new(carriers.to_vec(), None));
            by_prefix.push((String::new(), all));
        }
        for config in routes {
            let members: Vec<Arc<Carrier>> =
                config.carriers.iter().filter_map(|name| carriers.iter().find(|c| c.name() == name).cloned()).collect();
            if members.is_empty() {
                continue;
            }
            let route = Arc::new(Route::new(members, Some(config)));
            for prefix in &config.prefixes {
                let digits = if prefix == "*" { String::new() } else { prefix.trim_start_matches('+').to_string() };
                by_prefix.push((digits, route.clone()));
            }
        }
        by_prefix.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Routes { by_prefix }
    }

    /// The route for an E.164 destination (with `+`), or `None`: nothing may carry it.
    pub fn route(&self, to: &str) -> Option<&Arc<Route>> {
        let digits = to.trim_start_matches('+');
        self.by_prefix.iter().find(|(prefix, _)| digits.starts_with(prefix.as_str())).map(|(_, r)| r)
    }
}

/// The carriers and routes in force. SIGHUP swaps in a new set; every reader takes a snapshot
/// per decision, so a reload never leaves a message half-routed.
pub struct Network {
    current: std::sync::RwLock<Arc<Fabric>>,
}

/// One consistent set of carriers and the routes over them.
pub struct Fabric {
    pub carriers: Vec<Arc<Carrier>>,
    pub routes: Routes,
}

impl Network {
    pub fn new(carriers: Vec<Arc<Carrier>>, routes: &[RouteConfig]) -> Network {
        let routes = Routes::new(routes, &carriers);
        Network { current: std::sync::RwLock::new(Arc::new(Fabric { carriers, routes })) }
    }

    pub fn current(&self) -> Arc<Fabric> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, carriers: Vec<Arc<Carrier>>, routes: &[RouteConfig]) {
        let routes = Routes::new(routes, &carriers);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Fabric { carriers, routes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_cycles_are_proportional_and_interleaved() {
        assert_eq!(smooth_cycle(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_cycle(&[1, 1]), vec![0, 1]);
        let cycle = smooth_cycle(&[5, 3, 2]);
        assert_eq!(cycle.len(), 10);
        assert_eq!(cycle.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(cycle.iter().filter(|&&i| i == 2).count(), 2);
        assert_eq!(smooth_cycle(&[0, 2]), vec![1, 1]);
    }
}
