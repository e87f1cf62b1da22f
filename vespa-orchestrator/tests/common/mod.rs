//! What the HTTP API's integration tests share: a VO (no tree below it) with the API's parts
//! and the API itself served on a free loopback port.

use std::net::SocketAddr;
use std::sync::Arc;

use vespa_node::{Hooks, Node, NodeHandle, NodeSpec, Role, Security};
use vespa_orchestrator::http::{self, ApiParts};

/// Runs a VO with `parts`' alert handler and serves `parts`' API for it; returns where.
#[allow(dead_code)] // not by every test file
pub async fn serve(parts: ApiParts) -> SocketAddr {
    let security = Security::Psk(vespa_proto::Psk::random());
    serve_vo(parts, security, None).await.0
}

/// [`serve`] with the VO's own keys, listening for the tree on `tree` if given, and answering
/// the decision verbs there; returns the API's address and the VO.
pub async fn serve_vo(
    parts: ApiParts,
    security: Security,
    tree: Option<tokio::net::TcpListener>,
) -> (SocketAddr, NodeHandle) {
    let mut hooks = Hooks::default();
    parts.add_vo_handler(&mut hooks);
    parts.add_vo_verbs(&mut hooks);
    let vo = Node::new(NodeSpec::new("VO", Role::Vo, None, security), hooks).expect("VO");
    let handle = vo.handle();
    let state = parts.state(vo.handle());
    tokio::spawn(vo.run(tree, std::future::pending()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(http::serve(
        listener,
        Arc::new(state),
        std::future::pending(),
    ));
    (addr, handle)
}
