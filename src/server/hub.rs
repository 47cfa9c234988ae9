//! The Mercure hub and JWT rights on the loop: a token checked (through the hub's cache), the
//! subscription's selection and rights acquired from the log, the stream started with its resume
//! headers, a publication checked and stored like any other. The rules are `mercure::hub`'s.

use super::*;

#[cfg(feature = "mercure")]
pub(super) use enabled::HubState;

#[cfg(not(feature = "mercure"))]
pub(super) use disabled::HubState;

/// Without the feature no hub exists: the loop's field is always `None`, and nothing routes here
/// (the hub's path is unknown and JWT keys are refused by `Config::validate`).
#[cfg(not(feature = "mercure"))]
mod disabled {
    use super::*;

    /// Uninhabited: there is never a hub.
    pub(in crate::server) enum HubState {}

    impl HubState {
        pub(in crate::server) fn start(_: &Config) -> Result<Option<HubState>, Error> {
            Ok(None)
        }

        pub(in crate::server) fn render_metrics(&self, _: &mut String) {
            match *self {}
        }
    }

    impl Loop {
        pub(in crate::server) fn hub_subscribe(&mut self, key: Key, meta: &Meta, _: &route::HubSubscribe) {
            self.refuse(key, meta, &Refusal::Route(route::RouteError::NotFound));
        }

        pub(in crate::server) fn hub_publish(&mut self, key: Key, meta: &Meta, _: Credentials, _: Vec<u8>) {
            self.refuse(key, meta, &Refusal::Route(route::RouteError::NotFound));
        }

        pub(in crate::server) fn authorize_events(
            &mut self,
            _: &Credentials,
            _: &Meta,
            _: &[&str],
            _: bool,
        ) -> Result<(broadcast::Rights, Option<Instant>), Refusal> {
            Ok((broadcast::Rights::Public, None))
        }
    }
}

#[cfg(feature = "mercure")]
mod enabled {
    use std::sync::Arc;

    use super::*;
    use crate::broadcast::{Rights as LogRights, Selection, URN_PREFIX};
    use crate::event::Draft;
    use crate::mercure::hub::{key_of, Access, Hub, Rights, SharedRights};
    use crate::mercure::jwt::{Role, TokenError};
    use crate::mercure::request::{RequestError, Subscribe as HubQuery, Update, UpdateLimits};

    /// The hub, when the server has one (always, with the feature: `/.well-known/mercure` answers
    /// even without JWT keys, with public updates only and publishing as open as on `/events`).
    pub(in crate::server) type HubState = Hub;

    /// The refusal a token problem is answered with (`WWW-Authenticate` as the spec asks).
    fn token_refusal(e: &TokenError) -> Refusal {
        let (status, challenge) = e.response(None);
        Refusal::Auth { status, challenge, reason: e.to_string() }
    }

    /// The refusal of a query or form that breaks the hub's rules (`400`, or `413` for a size).
    fn request_refusal(e: &RequestError) -> Refusal {
        Refusal::Hub(e.status(), e.message().to_string())
    }

    fn unix_secs() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    impl HubState {
        pub(in crate::server) fn start(config: &Config) -> Result<Option<HubState>, Error> {
            Hub::new(config).map(Some)
        }

        /// The hub's series for `/metrics`.
        pub(in crate::server) fn render_metrics(&self, out: &mut String) {
            use std::fmt::Write as _;
            let name = crate::metrics::names::JWT_SIGNATURE_CHECKS;
            let _ = writeln!(
                out,
                "# HELP {name} JWT signatures verified (a token found in the cache costs none).\n# TYPE {name} counter\n{name} {}",
                self.signature_checks()
            );
        }
    }

    impl Loop {
        /// The request's grant for `role`, or the refusal to answer with.
        fn access(
            &mut self,
            credentials: &Credentials,
            meta: &Meta,
            query_tokens: &[String],
            role: Role,
        ) -> Result<Access, Refusal> {
            let hub = self.hub.as_mut().expect("routed here only with a hub");
            let method = if role == Role::Publisher { Method::Post } else { Method::Get };
            let tokens: Vec<&str> = query_tokens.iter().map(String::as_str).collect();
            hub.authorize(credentials, method, meta.origin.as_deref(), &tokens, role, unix_secs()).map_err(
                |e| {
                    debug!("token refused: {e}");
                    token_refusal(&e)
                },
            )
        }

        /// The subscribe rights of `access`, compiled (`None` for an anonymous subscriber).
        fn subscribe_rights(&mut self, access: &Access) -> Result<Option<Arc<Rights>>, Refusal> {
            let Some(grant) = &access.grant else { return Ok(None) };
            let hub = self.hub.as_mut().expect("routed here only with a hub");
            hub.rights(&grant.subscribe).map(Some).map_err(|e| token_refusal(&e))
        }

        /// The private events `access` may read, held in the log (release with the stream).
        fn private_rights(&mut self, access: &Access) -> Result<LogRights, Refusal> {
            let Some(rights) = self.subscribe_rights(access)? else { return Ok(LogRights::Public) };
            Ok(if rights.is_any() {
                LogRights::All
            } else if rights.is_empty() {
                LogRights::Public
            } else {
                let key = rights.key().to_string();
                LogRights::Matching(self.log.acquire_derived(&key, true, || Box::new(SharedRights(rights))))
            })
        }

        /// When a stream on `access` must end: no later than its token's `exp`.
        fn token_deadline(&self, access: &Access) -> Option<Instant> {
            let exp = access.grant.as_ref()?.expires_at?;
            let left = exp.saturating_sub(unix_secs());
            Some(crate::timer::deadline_after(self.now, Duration::from_secs(left)))
        }

        /// `/events` with JWT keys, and hub publications: the token must grant `subscribe` on
        /// every topic asked for (`*` for an every-topic stream), or `publish` on every topic of
        /// the event. The rights to private events (subscribe) and the token's end come back.
        pub(in crate::server) fn authorize_events(
            &mut self,
            credentials: &Credentials,
            meta: &Meta,
            topics: &[&str],
            publish: bool,
        ) -> Result<(LogRights, Option<Instant>), Refusal> {
            let role = if publish { Role::Publisher } else { Role::Subscriber };
            let access = self.access(credentials, meta, &[], role)?;
            let Some(grant) = &access.grant else {
                return Err(token_refusal(&TokenError::Missing));
            };
            let raw = if publish { &grant.publish } else { &grant.subscribe };
            let hub = self.hub.as_mut().expect("routed here only with a hub");
            let rights = hub.rights(raw).map_err(|e| token_refusal(&e))?;
            let allowed =
                if topics.is_empty() { rights.is_any() } else { topics.iter().all(|t| rights.allows(t)) };
            if !allowed {
                return Err(token_refusal(&TokenError::InsufficientScope));
            }
            if publish {
                return Ok((LogRights::Public, None));
            }
            let deadline = self.token_deadline(&access);
            Ok((self.private_rights(&access)?, deadline))
        }

        /// `GET /.well-known/mercure`.
        pub(in crate::server) fn hub_subscribe(
            &mut self,
            key: Key,
            meta: &Meta,
            request: &route::HubSubscribe,
        ) {
            let query = match HubQuery::parse(request.query.as_bytes()) {
                Ok(query) => query,
                Err(e) => return self.refuse(key, meta, &request_refusal(&e)),
            };
            let base = self.hub.as_ref().expect("routed here only with a hub").base().clone();
            // The request module's compile, whose refusals name the matcher (the one fuzzed).
            let routes = match query.compile(&base) {
                Ok(matchers) => Rights::new(
                    matchers,
                    key_of(query.matchers.iter().map(|(kind, value)| (*kind, value.as_str()))),
                ),
                Err(e) => return self.refuse(key, meta, &request_refusal(&e)),
            };
            let access = match self.access(&request.credentials, meta, &query.authorization, Role::Subscriber)
            {
                Ok(access) => access,
                Err(refusal) => return self.refuse(key, meta, &refusal),
            };
            if request.head_only {
                // The refusals a stream would get, without building its private index.
                if let Err(refusal) = self.subscribe_rights(&access) {
                    return self.refuse(key, meta, &refusal);
                }
                let cors = self.cors(meta.origin.as_deref());
                let keep_alive = meta.keep_alive;
                let conn = self.conns.get_mut(key).expect("caller holds a live key");
                let out = conn.conn.answer(keep_alive, self.now);
                return response::stream_head(meta.http10, keep_alive, &cors, out);
            }
            let rights = match self.private_rights(&access) {
                Ok(rights) => rights,
                Err(refusal) => return self.refuse(key, meta, &refusal),
            };
            let cors = self.cors(meta.origin.as_deref());
            let selection = if routes.is_any() {
                Selection::All
            } else if let Some(topics) = routes.exact_topics() {
                self.log.acquire(&topics)
            } else {
                let key = routes.key().to_string();
                let routes = Arc::new(routes);
                Selection::One(self.log.acquire_derived(&key, false, || Box::new(SharedRights(routes))))
            };
            // The header wins over the query's `last_event_id`, which wins over `lastEventID`.
            let last = request.last_event_id.clone().filter(|v| !v.is_empty()).or(query.last_event_id);
            let mut headers = cors;
            let resume = match last.as_deref() {
                None => self.log.resume(&selection, None),
                Some(text) => {
                    let found = if text == "earliest" { None } else { self.log.resolve_id(text) };
                    // `earliest`, or an id the history does not hold (never given, or gone): every
                    // retained event, and the answer says the replay starts at the earliest.
                    let resume = self.log.resume(&selection, Some(found.unwrap_or(0)));
                    let preceding = match (found, resume.gap) {
                        (Some(_), None) => text,
                        _ => "earliest",
                    };
                    // The current revision's field, and the one older hubs sent.
                    let _ = write!(
                        headers,
                        "Mercure-Last-Event-ID: {preceding}\r\nLast-Event-ID: {preceding}\r\n"
                    );
                    resume
                }
            };
            let subscription =
                Subscription::new(selection, Framing::for_http10(meta.http10), &resume).with_rights(rights);
            let deadline = self.token_deadline(&access);
            debug!(
                "conn={} hub subscription {:?} from {last:?}, anonymous: {}",
                key.slot,
                query.matchers,
                access.grant.is_none()
            );
            // No ssed-gap notice: Mercure clients learn of a loss from Mercure-Last-Event-ID.
            self.start_subscription(key, meta, subscription, None, deadline, &headers);
        }

        /// `POST /.well-known/mercure`.
        pub(in crate::server) fn hub_publish(
            &mut self,
            key: Key,
            meta: &Meta,
            credentials: Credentials,
            body: Vec<u8>,
        ) {
            let hub = self.hub.as_ref().expect("routed here only with a hub");
            let limits = UpdateLimits { max_data_bytes: self.config.max_body, ..UpdateLimits::default() };
            let update = match Update::parse(&body, hub.base(), &limits) {
                Ok(update) => update,
                Err(e) => return self.refuse(key, meta, &request_refusal(&e)),
            };
            // Without JWT keys the static publish token, if any, was checked with the route.
            if hub.verifies() {
                let topics: Vec<&str> = update.topics.iter().map(String::as_str).collect();
                if let Err(refusal) = self.authorize_events(&credentials, meta, &topics, true) {
                    return self.refuse(key, meta, &refusal);
                }
            }
            if update.id.as_deref().is_some_and(|id| id.starts_with(URN_PREFIX)) {
                // The hub's own form: `urn:ssed:N` resolves to the number N, so a publisher's id
                // of that form would name another event.
                let refusal =
                    Refusal::Hub(400, format!("an id starting with {URN_PREFIX} is the hub's own form"));
                return self.refuse(key, meta, &refusal);
            }
            let draft = Draft {
                topics: update.topics,
                event_type: update.event_type,
                retry_ms: update.retry,
                data: update.data.unwrap_or_default().into_bytes(),
                id: update.id,
                private: update.private,
                hub_topics: true,
            };
            match draft.validate(self.config.max_body) {
                Ok(event) => self.carry_out_publish(key, meta, event, true),
                Err(e) => self.refuse(key, meta, &Refusal::Hub(400, e.to_string())),
            }
        }
    }
}

use crate::http::request::Credentials;
#[cfg(feature = "mercure")]
use crate::http::request::Method;
use crate::http::route;
#[cfg(feature = "mercure")]
use std::io::Write as _;
