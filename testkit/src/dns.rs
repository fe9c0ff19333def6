//! A name server for tests: answers A queries for the names it is given, from
//! records that change while it runs (a headless Service's ready endpoints as pods
//! come and go). Authoritative, TTL 0, over UDP; the wire format is hickory's. Any
//! other name is NXDOMAIN, any other type of a known name an empty answer.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

pub struct Dns {
    pub address: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    /// Queries answered, of any name.
    pub queries: Arc<AtomicU64>,
    task: tokio::task::AbortHandle,
}

impl Dns {
    /// Listens on `listen` (UDP).
    pub async fn start(listen: SocketAddr) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(listen).await?;
        let address = socket.local_addr()?;
        let records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Arc::default();
        let queries = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(socket, records.clone(), queries.clone())).abort_handle();
        Ok(Self {
            address,
            records,
            queries,
            task,
        })
    }

    /// `name`'s A records from now on (none: the name does not exist).
    pub fn set(&self, name: &str, addresses: &[Ipv4Addr]) {
        let mut records = self.records.lock().unwrap();
        match addresses.is_empty() {
            true => records.remove(&key(name)),
            false => records.insert(key(name), addresses.to_vec()),
        };
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: UdpSocket, records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>, queries: Arc<AtomicU64>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((length, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buffer[..length]) else {
            continue;
        };
        if query.metadata.message_type != MessageType::Query {
            continue;
        }
        queries.fetch_add(1, Ordering::Relaxed);
        let answer = answer(&query, &records.lock().unwrap());
        if let Ok(bytes) = answer.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

fn answer(query: &Message, records: &HashMap<String, Vec<Ipv4Addr>>) -> Message {
    let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
    answer.metadata.authoritative = true;
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_queries(query.queries.iter().cloned());
    for question in &query.queries {
        let name: &Name = question.name();
        match records.get(&key(&name.to_ascii())) {
            None => answer.metadata.response_code = ResponseCode::NXDomain,
            Some(addresses) if question.query_type() == RecordType::A => {
                for address in addresses {
                    answer.add_answer(Record::from_rdata(name.clone(), 0, RData::A(A(*address))));
                }
            }
            Some(_) => {}
        }
    }
    answer
}
