//! The `tidelog.v1.Admin` service: create, delete, list, describe and alter topics,
//! raise their partition count, describe the broker.
//! Create and delete fsync files and directories, so they run on the blocking pool.

use std::sync::Arc;
use std::time::Instant;

use tidelog_proto::v1::admin_server::Admin;
use tidelog_proto::v1::{
    AlterTopicConfigRequest, AlterTopicConfigResponse, BrokerSetting, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest,
    DeleteTopicResponse, DescribeBrokerRequest, DescribeBrokerResponse, DescribeTopicRequest,
    DescribeTopicResponse, ListTopicsRequest, ListTopicsResponse,
};
use tidelog_storage::access::QuotaLimits;
use tidelog_storage::config::{INTERNAL_TOPIC_PREFIX, validate_new_topic_name};
use tonic::{Request, Response, Status};

use crate::auth::{Caller, Target};

use crate::AppState;
use crate::config::Bound;
use crate::convert;

/// The Admin service over the shared state.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: Arc<AppState>,
    /// Serializes AlterTopicConfig: each reads the current config, applies its
    /// update and writes the result, so two at once could lose one update.
    alter: Arc<tokio::sync::Mutex<()>>,
    /// Where the broker listens (the ports it bound), for DescribeBroker.
    bound: Bound,
    /// When the broker started serving, ms since the Unix epoch.
    started_at_ms: i64,
}

impl AdminService {
    pub fn new(state: Arc<AppState>, bound: Bound) -> Self {
        let started_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        AdminService {
            state,
            alter: Arc::default(),
            bound,
            started_at_ms,
        }
    }

    /// Records the call's metrics and passes its result through.
    fn finish<T>(
        &self,
        method: &'static str,
        started: Instant,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        self.state
            .metrics
            .rpc_finished(method, started, result.as_ref().err().map(Status::code));
        result
    }

    /// The topics_max and partitions_max of `owner`, when it has either.
    fn creation_limits(&self, owner: Option<&str>) -> Option<QuotaLimits> {
        let (_, limits) = self.state.auth.limits_of(owner?)?;
        (limits.topics_max.is_some() || limits.partitions_max.is_some()).then_some(limits)
    }

    /// Refuses a creation of `topics` topics and `partitions` partitions owned by
    /// `owner` that would take it past its topics_max or partitions_max. The caller
    /// holds [`Auth::lock_creations`] when the owner has either limit.
    fn check_owned_limits(
        &self,
        owner: &str,
        limits: &QuotaLimits,
        topics: u64,
        partitions: u64,
    ) -> Result<(), Status> {
        let owned: Vec<_> = self
            .state
            .store
            .topics()
            .into_iter()
            .filter(|t| t.owner() == Some(owner))
            .collect();
        let owned_topics = owned.len() as u64;
        let owned_partitions: u64 = owned.iter().map(|t| t.partitions().len() as u64).sum();
        let over = |limit: Option<u64>, have: u64, adding: u64| {
            limit.filter(|max| adding > 0 && have.saturating_add(adding) > *max)
        };
        let refused = if let Some(max) = over(limits.topics_max, owned_topics, topics) {
            Some(("topics", max, owned_topics, topics, "--topics"))
        } else {
            over(limits.partitions_max, owned_partitions, partitions).map(|max| {
                (
                    "partitions",
                    max,
                    owned_partitions,
                    partitions,
                    "--partitions",
                )
            })
        };
        let Some((kind, max, have, adding, flag)) = refused else {
            return Ok(());
        };
        self.state.metrics.quota_limit_refused(owner, kind);
        Err(Status::resource_exhausted(format!(
            "principal {owner} has {have} {kind} in topics it created and may have at most \
             {max} (its {kind}_max quota); {adding} more would pass it. Delete topics it no \
             longer needs, or an admin can raise the limit: tidelog quota set --principal \
             {owner} {flag} N"
        )))
    }

    async fn create(
        &self,
        request: CreateTopicRequest,
        caller: Option<Caller>,
    ) -> Result<CreateTopicResponse, Status> {
        validate_new_topic_name(&request.name).map_err(|e| convert::status(&e))?;
        let config = convert::topic_config_from_proto(request.config)?;
        let partitions = convert::partition_count(request.partitions);
        let owner = caller.map(|c| c.principal);
        let limits = self.creation_limits(owner.as_deref());
        let _counted = match (&owner, &limits) {
            (Some(owner), Some(limits)) => {
                let lock = self.state.auth.lock_creations().await;
                self.check_owned_limits(owner, limits, 1, u64::from(partitions))?;
                Some(lock)
            }
            _ => None,
        };
        let store = self.state.store.clone();
        let name = request.name;
        let topic =
            blocking(move || store.create_topic_owned(&name, partitions, config, owner.as_deref()))
                .await?;
        // Groups whose pattern members match it take it in now.
        self.state.groups.topic_created(topic.name());
        // Plain pattern streams look at the topic list now.
        self.state.topic_changes.changed();
        self.state.queues.topics_changed();
        Ok(CreateTopicResponse {
            topic: Some(convert::topic_description(&topic.info())),
        })
    }

    async fn delete(&self, request: DeleteTopicRequest) -> Result<DeleteTopicResponse, Status> {
        let store = self.state.store.clone();
        let name = request.name.clone();
        let deleted = blocking(move || store.delete_topic(&name)).await;
        // A failure after the topic left the store (its offsets or queues could not
        // be deleted) is answered, but the delete stood: what follows runs all the
        // same.
        if let Err(status) = &deleted
            && (status.code() == tonic::Code::NotFound
                || self.state.store.topic(&request.name).is_ok())
        {
            return Err(status.clone());
        }
        self.state.metrics.forget_topic(&request.name);
        // Group members reading the topic by name end with NOT_FOUND; it drops out
        // of pattern members' assignments.
        self.state.groups.topic_deleted(&request.name);
        self.state.topic_changes.changed();
        // Its queues went with it: their members' streams end with NOT_FOUND.
        self.state.queues.forget_missing();
        self.state.queues.topics_changed();
        deleted.map(|()| DeleteTopicResponse {})
    }

    fn list(&self, request: &Request<ListTopicsRequest>) -> ListTopicsResponse {
        let auth = &self.state.auth;
        let request_ref = request;
        let request = request.get_ref();
        ListTopicsResponse {
            topics: self
                .state
                .store
                .topics()
                .iter()
                .filter(|t| {
                    request.include_internal || !t.name().starts_with(INTERNAL_TOPIC_PREFIX)
                })
                .filter(|t| auth.may(request_ref, Target::topic(t.name())))
                .map(|t| convert::topic_summary(&t.info()))
                .collect(),
        }
    }

    fn describe(&self, request: &DescribeTopicRequest) -> Result<DescribeTopicResponse, Status> {
        let topic = convert::or_status(self.state.store.topic(&request.name))?;
        Ok(DescribeTopicResponse {
            topic: Some(convert::topic_description(&topic.info())),
        })
    }

    async fn alter(
        &self,
        request: AlterTopicConfigRequest,
    ) -> Result<AlterTopicConfigResponse, Status> {
        let _serialized = self.alter.lock().await;
        let topic = convert::or_status(self.state.store.topic(&request.name))?;
        let config = convert::apply_config_update(&topic.config(), request.update)?;
        let store = self.state.store.clone();
        let name = request.name;
        // Writes the config file atomically (with fsyncs).
        let topic = blocking(move || store.alter_topic(&name, config)).await?;
        Ok(AlterTopicConfigResponse {
            topic: Some(convert::topic_description(&topic.info())),
        })
    }
}

impl AdminService {
    async fn create_partitions(
        &self,
        request: CreatePartitionsRequest,
    ) -> Result<CreatePartitionsResponse, Status> {
        let topic = convert::or_status(self.state.store.topic(&request.name))?;
        // The partitions count toward the limit of the topic's owner, whoever adds them.
        let owner = topic.owner().map(str::to_string);
        let limits = self.creation_limits(owner.as_deref());
        let _counted = match (&owner, &limits) {
            (Some(owner), Some(limits)) => {
                let lock = self.state.auth.lock_creations().await;
                let current = self
                    .state
                    .store
                    .topic(&request.name)
                    .map_or(0, |t| t.partitions().len() as u64);
                let adding = u64::from(request.partitions).saturating_sub(current);
                self.check_owned_limits(owner, limits, 0, adding)?;
                Some(lock)
            }
            _ => None,
        };
        drop(topic);
        let store = self.state.store.clone();
        let name = request.name.clone();
        let count = request.partitions;
        // Creates directories and files and rewrites the config, with fsyncs.
        let topic = blocking(move || store.create_partitions(&name, count)).await?;
        // Groups reading the topic take the new partitions in.
        self.state.groups.topic_grew(&request.name);
        // Plain streams on every partition of the topic (or on a pattern that matches
        // it) read the new partitions from now on.
        self.state.topic_changes.changed();
        Ok(CreatePartitionsResponse {
            topic: Some(convert::topic_description(&topic.info())),
        })
    }

    fn describe_broker(&self) -> DescribeBrokerResponse {
        let mut settings: Vec<BrokerSetting> = self
            .state
            .config
            .effective()
            .into_iter()
            .map(|(name, value)| BrokerSetting {
                name: name.to_string(),
                value,
            })
            .collect();
        // The addresses as bound (port 0 in the settings is a real port here).
        for setting in &mut settings {
            match setting.name.as_str() {
                "listen" => setting.value = self.bound.grpc.to_string(),
                "metrics_listen" => setting.value = self.bound.metrics.to_string(),
                "data_dir" => setting.value = self.bound.data_dir.display().to_string(),
                _ => {}
            }
        }
        DescribeBrokerResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: self.bound.data_dir.display().to_string(),
            listen: self.bound.grpc.to_string(),
            metrics_listen: self.bound.metrics.to_string(),
            started_at_ms: self.started_at_ms,
            settings,
        }
    }
}

/// Runs a storage call that fsyncs on the blocking pool and maps its error.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> tidelog_storage::Result<T> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => convert::or_status(result),
        Err(error) => {
            tracing::error!(%error, "a blocking storage task failed");
            Err(Status::internal(
                "the storage task failed; the broker logged it, retry later",
            ))
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let started = Instant::now();
        let result = match self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().name)])
        {
            Ok(()) => {
                let caller = request.extensions().get::<Caller>().cloned();
                self.create(request.into_inner(), caller).await
            }
            Err(status) => Err(status),
        };
        self.finish("CreateTopic", started, result)
            .map(Response::new)
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let started = Instant::now();
        let result = match self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().name)])
        {
            Ok(()) => self.delete(request.into_inner()).await,
            Err(status) => Err(status),
        };
        self.finish("DeleteTopic", started, result)
            .map(Response::new)
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let started = Instant::now();
        let result = Ok(self.list(&request));
        self.finish("ListTopics", started, result)
            .map(Response::new)
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let started = Instant::now();
        let result = self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().name)])
            .and_then(|()| self.describe(request.get_ref()));
        self.finish("DescribeTopic", started, result)
            .map(Response::new)
    }

    async fn alter_topic_config(
        &self,
        request: Request<AlterTopicConfigRequest>,
    ) -> Result<Response<AlterTopicConfigResponse>, Status> {
        let started = Instant::now();
        let result = match self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().name)])
        {
            Ok(()) => self.alter(request.into_inner()).await,
            Err(status) => Err(status),
        };
        self.finish("AlterTopicConfig", started, result)
            .map(Response::new)
    }

    async fn create_partitions(
        &self,
        request: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        let started = Instant::now();
        let result = match self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().name)])
        {
            Ok(()) => AdminService::create_partitions(self, request.into_inner()).await,
            Err(status) => Err(status),
        };
        self.finish("CreatePartitions", started, result)
            .map(Response::new)
    }

    async fn describe_broker(
        &self,
        request: Request<DescribeBrokerRequest>,
    ) -> Result<Response<DescribeBrokerResponse>, Status> {
        let started = Instant::now();
        let result = self
            .state
            .auth
            .authorize(&request, &[Target::cluster()])
            .map(|()| AdminService::describe_broker(self));
        self.finish("DescribeBroker", started, result)
            .map(Response::new)
    }
}
