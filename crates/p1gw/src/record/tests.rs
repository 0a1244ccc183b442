use super::*;

fn recorder(file: std::fs::File) -> Recorder {
    Recorder {
        file,
        tally: Tally::new(16 * 1024),
        written: 0,
        error: None,
        stop: CancellationToken::new(),
        edge: FrameEdge::default(),
        grace: None,
    }
}

#[test]
fn frame_edges_follow_line_initial_slash_and_bang_lines() {
    let mut edge = FrameEdge::default();
    let text = b"noise!\r\n/ISK5\r\n\r\n0-1:24.2.2(1*m3/h)\r\n!1A2B\r\n/X\r\n!\n";
    let first_end = text
        .windows(7)
        .position(|w| w == b"!1A2B\r\n")
        .expect("the first bang line")
        + 6;
    let ends: Vec<usize> = text
        .iter()
        .enumerate()
        .filter(|(_, b)| edge.step(**b))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        ends,
        [first_end, text.len() - 1],
        "a '!' outside a frame and a '/' mid-line do not count"
    );
    assert!(!edge.in_frame);
}

#[test]
fn after_a_stop_only_the_rest_of_the_telegram_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rec");
    let mut r = recorder(std::fs::File::create(&path).expect("create"));
    r.consume(b"/ISK5\r\n\r\n1-0:1.8.1(1.000*kWh)\r\n");
    assert!(r.edge.in_frame);
    let grace = CancellationToken::new();
    r.grace = Some(grace.clone());
    r.consume(b"1-0:1.8.2(2.000*kWh)\r\n!\r\n/ISK5\r\n\r\n1-0");
    assert!(grace.is_cancelled(), "the telegram ended");
    r.consume(b":1.8.1(1.000*kWh)\r\n");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"/ISK5\r\n\r\n1-0:1.8.1(1.000*kWh)\r\n1-0:1.8.2(2.000*kWh)\r\n!\r\n"
    );
    assert_eq!(r.tally.telegrams, 1);
}
