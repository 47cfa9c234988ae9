//! Embeds ssed in a program: the server runs on a background thread while the program publishes
//! from its own code (here a clock that ticks every second on topic `clock`).
//!
//! ```text
//! cargo run --example embed                      # serves on 127.0.0.1:8080 for ten seconds
//! curl -N 'localhost:8080/events?topic=clock'    # in another terminal
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ssed::{Config, Event, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The embedding program owns logging; the library only reports through `log`.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let config = Config { history: 1_000, heartbeat: Duration::from_secs(5), ..Config::default() };
    let server = Server::bind(config)?;
    println!("serving on http://{}/events?topic=clock", server.local_addr());
    let publisher = server.publisher();
    let shutdown = server.shutdown_handle();
    let loop_thread = std::thread::spawn(move || server.run());

    for _ in 0..10 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let id =
            publisher.publish(Event::new(format!("{{\"unix\":{now}}}")).topic("clock").event_type("tick"))?;
        println!("published tick {id}");
        std::thread::sleep(Duration::from_secs(1));
    }

    // Ends every stream cleanly (clients reconnect elsewhere) and waits for the loop to return.
    shutdown.shutdown();
    loop_thread.join().map_err(|_| "the server thread panicked")??;
    Ok(())
}
