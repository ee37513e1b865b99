//! An immediate power request in one of its wire forms, as the tests send
//! it: grouped `NodePower` `Reboot`/`Shutdown` (code 106) or flat `reboot`
//! (4) / `shutdown` (21).

use roxyd::{
    platform::ImmediateOp,
    reply::WireForm,
    wire::{self, NodePowerRequest, RequestCode},
};

/// One immediate request in one wire form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Immediate {
    /// `NodePower` `Reboot`, code 106.
    GroupedReboot,
    /// `NodePower` `Shutdown`, code 106.
    GroupedShutdown,
    /// Flat `reboot`, code 4.
    FlatReboot,
    /// Flat `shutdown`, code 21.
    FlatShutdown,
}

impl Immediate {
    /// Its request code and body.
    pub fn code_and_body(self) -> (u32, Vec<u8>) {
        match self {
            Self::GroupedReboot => (
                RequestCode::NODE_POWER,
                wire::encode(&NodePowerRequest::Reboot),
            ),
            Self::GroupedShutdown => (
                RequestCode::NODE_POWER,
                wire::encode(&NodePowerRequest::Shutdown),
            ),
            Self::FlatReboot => (RequestCode::FLAT_REBOOT, Vec::new()),
            Self::FlatShutdown => (RequestCode::FLAT_SHUTDOWN, Vec::new()),
        }
    }

    /// Its request frame's payload.
    pub fn frame(self) -> Vec<u8> {
        let (code, body) = self.code_and_body();
        wire::encode_request(code, &body)
    }

    /// Its wire form, which decides its success reply.
    pub fn form(self) -> WireForm {
        match self {
            Self::GroupedReboot | Self::GroupedShutdown => WireForm::Grouped,
            Self::FlatReboot | Self::FlatShutdown => WireForm::Flat,
        }
    }

    /// The operation it asks for.
    pub fn op(self) -> ImmediateOp {
        match self {
            Self::GroupedReboot | Self::FlatReboot => ImmediateOp::Reboot,
            Self::GroupedShutdown | Self::FlatShutdown => ImmediateOp::PowerOff,
        }
    }
}
