//! The whole stack as users meet it, through the gateway: one test binary,
//! one module per flow.

mod admin_and_orders;
mod browser;
mod first_tutorial;
mod notifications;
mod second_tutorial;
mod traces;
