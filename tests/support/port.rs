//! Free loopback ports that stay reserved until used.
//!
//! The OS picks the port (bind to port 0) and the listener stays bound until
//! the caller hands it over: so two tests, or two ports of one test, cannot
//! be given the same port. An in-process server takes the bound
//! [`std::net::TcpListener`] itself ([`FreePort::into_listener`]); a child
//! process that binds on its own gets the number from [`FreePort::release`]
//! right before it is spawned.

use std::net::{SocketAddr, TcpListener};

/// A loopback port, bound (and so reserved) while this is alive.
#[derive(Debug)]
pub struct FreePort {
    listener: TcpListener,
}

impl FreePort {
    /// A port nobody else can take until this is released or dropped.
    pub fn new() -> FreePort {
        // expect: binding port 0 on loopback only fails if the host has no
        // loopback, and then no test can run anyway.
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free loopback port");
        FreePort { listener }
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        // expect: a bound listener has an address.
        self.listener
            .local_addr()
            .expect("a bound listener's address")
    }

    /// The bound listener, for a server in this process to accept on.
    pub fn into_listener(self) -> TcpListener {
        self.listener
    }

    /// Unbinds the port and returns its number, for a child process to bind
    /// (call it right before spawning the child).
    pub fn release(self) -> u16 {
        self.port()
    }
}

impl Default for FreePort {
    fn default() -> FreePort {
        FreePort::new()
    }
}
