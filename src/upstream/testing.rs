//! Fuzz harnesses for what a backend sends back (the `upstream_response` target).

use super::http::ResponseParser;

/// Arbitrary bytes as a backend's response: the parser never panics, answers the same whether
/// the bytes come whole or in pieces (the first byte picks the piece size), never returns a
/// body over its cap, and the results parser takes whatever body it returns without panicking.
pub fn check_response(data: &[u8]) {
    let Some((&step, bytes)) = data.split_first() else { return };
    let (max_head, max_body) = (512, 4096);
    let whole = {
        let mut p = ResponseParser::new(max_head, max_body);
        match p.feed(bytes) {
            Ok(Some(r)) => Ok(Some(r)),
            Ok(None) => p.eof().map(Some).or(Ok(None)),
            Err(e) => Err(e),
        }
    };
    let pieces = {
        let mut p = ResponseParser::new(max_head, max_body);
        let mut answer = Ok(None);
        for chunk in bytes.chunks(usize::from(step % 17) + 1) {
            match p.feed(chunk) {
                Ok(None) => continue,
                other => {
                    answer = other;
                    break;
                }
            }
        }
        match answer {
            Ok(None) => p.eof().map(Some).or(Ok(None)),
            other => other,
        }
    };
    // A response answered early in pieces stops before later bytes the whole feed also saw,
    // which can only differ in keep-alive (extra bytes after the response).
    match (&whole, &pieces) {
        (Ok(Some(a)), Ok(Some(b))) => {
            assert_eq!((a.status, &a.body), (b.status, &b.body));
            assert!(a.body.len() <= max_body);
            for n in [0, 1, 3] {
                let _ = super::parse_results(&a.body, n);
            }
        }
        (Err(_), _) | (_, Err(_)) | (Ok(None), Ok(None)) => {}
        (a, b) => panic!("whole {a:?} but in pieces {b:?}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_harness_takes_responses_and_garbage() {
        for input in [
            &b"\x03HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"results\":[]}"[..],
            b"\x05HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"\x00HTTP/1.1 500 X\r\n\r\nrest",
            b"\x07\xff\xfe",
            b"",
        ] {
            super::check_response(input);
        }
    }
}
