//! Tool calls on the runtime: `execute_tool` (the NIF) returns a call id at once; a task
//! makes the unary `ExecuteTool` call (connecting first if need be, all within the call's
//! timeout) and sends the caller `{:snakepit_tool_result, call_id, result}`, so no scheduler
//! waits on the network. `result` is one of
//!
//! - `{:response, success, result_json, error_message, metadata}` (the worker answered);
//! - `{:error, :timeout}`, `{:error, {:grpc, code, message}}` (`code` the integer gRPC
//!   status), `{:error, :response_too_large}` or `{:error, {:transport, text}}`.
//!
//! The JSON itself is encoded and decoded in the caller's process (`json.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost_types::Any;
use rustler::{Encoder, Env, LocalPid, NewBinary, OwnedEnv, Term};
use snakepit_telemetry_core::client::WorkerAddress;
use snakepit_telemetry_core::proto::{ExecuteToolRequest, ExecuteToolResponse};
use snakepit_telemetry_core::tool_client::{execute_tool, CallError, CallOptions};
use tonic::transport::Channel;

use crate::atoms;

/// The type URL Snakepit's Elixir client puts on each JSON parameter.
const JSON_TYPE_URL: &str = "type.googleapis.com/google.protobuf.StringValue";
/// The largest tool response accepted; a larger one is `{:error, :response_too_large}`.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Where a registered worker takes tool calls: its address, token, and the HTTP/2
/// connection kept for them (separate from the telemetry stream's).
pub struct ToolTarget {
    pub address: WorkerAddress,
    pub token: Option<Arc<str>>,
    channel: Mutex<Option<Channel>>,
}

impl ToolTarget {
    pub fn new(address: WorkerAddress, token: Option<Arc<str>>) -> ToolTarget {
        ToolTarget { address, token, channel: Mutex::new(None) }
    }

    async fn channel(&self, connect_timeout: Duration) -> Result<Channel, CallError> {
        let cached = self.channel.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(channel) = cached {
            return Ok(channel);
        }
        let channel = self.address.connect(connect_timeout).await.map_err(CallError::Transport)?;
        *self.channel.lock().unwrap_or_else(PoisonError::into_inner) = Some(channel.clone());
        Ok(channel)
    }

    /// After a transport failure the next call connects again.
    fn forget_channel(&self) {
        *self.channel.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// One call, as the NIF decoded it.
pub struct ToolRequest {
    pub call_id: u64,
    pub caller: LocalPid,
    pub tool: String,
    /// Parameter name and its JSON text.
    pub params: Vec<(String, Vec<u8>)>,
    pub session_id: String,
    pub metadata: Vec<(String, String)>,
    pub correlation_id: String,
    pub timeout: Duration,
}

/// Makes the call and sends its result to the caller.
pub async fn run(target: Arc<ToolTarget>, request: ToolRequest, connect_timeout: Duration) {
    let mut metadata: HashMap<String, String> = request.metadata.iter().cloned().collect();
    metadata.insert("correlation_id".into(), request.correlation_id.clone());
    let message = ExecuteToolRequest {
        session_id: request.session_id.clone(),
        tool_name: request.tool.clone(),
        parameters: request
            .params
            .iter()
            .map(|(name, json)| (name.clone(), Any { type_url: JSON_TYPE_URL.into(), value: json.clone() }))
            .collect(),
        metadata,
        stream: false,
        binary_parameters: HashMap::new(),
    };
    let call = async {
        let channel = target.channel(connect_timeout).await?;
        let options = CallOptions {
            correlation_id: &request.correlation_id,
            token: target.token.as_deref(),
            max_response_bytes: MAX_RESPONSE_BYTES,
        };
        execute_tool(channel, &message, options).await
    };
    let outcome = tokio::time::timeout(request.timeout, call).await;
    if let Ok(Err(CallError::Transport(_))) = &outcome {
        target.forget_channel();
    }
    let mut env = OwnedEnv::new();
    let _ = env.send_and_clear(&request.caller, |env| {
        let result = match &outcome {
            Ok(Ok(response)) => response_term(env, response),
            Ok(Err(error)) => (atoms::error(), error_term(env, error)).encode(env),
            Err(_) => (atoms::error(), atoms::timeout()).encode(env),
        };
        (atoms::snakepit_tool_result(), request.call_id, result).encode(env)
    });
}

fn response_term<'a>(env: Env<'a>, response: &ExecuteToolResponse) -> Term<'a> {
    let json = response.result.as_ref().map_or(&b"null"[..], |any| any.value.as_slice());
    let mut result = NewBinary::new(env, json.len());
    result.as_mut_slice().copy_from_slice(json);
    let result: Term = result.into();
    // A list of pairs, not a map: this runs off the schedulers.
    let metadata: Vec<(&str, &str)> =
        response.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (atoms::response(), response.success, result, response.error_message.as_str(), metadata).encode(env)
}

fn error_term<'a>(env: Env<'a>, error: &CallError) -> Term<'a> {
    match error {
        CallError::Status { code, message } => (atoms::grpc(), *code as i32, message.as_str()).encode(env),
        CallError::TooLarge => atoms::response_too_large().encode(env),
        CallError::Transport(text) => (atoms::transport(), text.as_str()).encode(env),
    }
}
