//! A build without the cargo feature `fastpath`: no program to load, so
//! no [`Kernel`] can exist (the configuration refuses `mode = "on"`).

use super::mirror::{FlowKey, FlowTarget};
use super::{AttachMode, ChanCount, Clock};

pub enum Kernel {}

impl Kernel {
    pub fn load() -> Result<Kernel, String> {
        Err("\"on\" needs a ferroturn built with the cargo feature `fastpath`; this one was built without it".to_owned())
    }
    pub fn attach(&self, _name: &str) -> Result<AttachMode, String> {
        match *self {}
    }
    pub fn detach_all(&self) {
        match *self {}
    }
    pub fn put(&self, _k: &FlowKey, _t: &FlowTarget, _clock: &Clock) -> Result<(), String> {
        match *self {}
    }
    pub fn delete(&self, _k: &FlowKey) {
        match *self {}
    }
    pub fn ceilings(&self, _slot: u32, _packet_rate: u64, _bandwidth: u64) -> Result<(), String> {
        match *self {}
    }
    pub fn relayed_in_userspace(
        &self,
        _slot: u32,
        _at_ns: u64,
        _packets: [u64; 2],
        _bytes: [u64; 2],
    ) -> Result<(), String> {
        match *self {}
    }
    pub fn count(&self, _slot: u32) -> ChanCount {
        match *self {}
    }
    pub fn zero(&self, _slot: u32) {
        match *self {}
    }
    pub fn limited(&self, _slot: u32) -> [u64; 2] {
        match *self {}
    }
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            instant: std::time::Instant::now(),
            monotonic_ns: 0,
        }
    }
}

pub const SLOTS: u32 = 0;
