//! Just enough XML for AWS answers (EC2, S3): a tree of elements with their
//! text.

use quick_xml::events::Event;
use quick_xml::reader::Reader;

/// One element: its local name (namespace prefix dropped), its text and its
/// children in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name.
    pub name: String,
    /// Text content (unescaped, trimmed).
    pub text: String,
    /// Child elements.
    pub children: Vec<Element>,
}

impl Element {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the child at `path` (`"instanceState/name"`).
    pub fn text_at(&self, path: &str) -> Option<&str> {
        let mut e = self;
        for part in path.split('/') {
            e = e.child(part)?;
        }
        Some(e.text.as_str())
    }

    /// The `<item>`s of the child list `name` (`instancesSet`).
    pub fn items<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Element> + 'a {
        self.child(name)
            .into_iter()
            .flat_map(|set| set.children.iter().filter(|c| c.name == "item"))
    }
}

/// Parses a document into its root element.
pub fn parse(bytes: &[u8]) -> Result<Element, String> {
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => stack.push(Element {
                name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                ..Element::default()
            }),
            Ok(Event::Empty(e)) => {
                let el = Element {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Element::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Ok(Event::Text(t)) => {
                let text = t.unescape().map_err(|e| e.to_string())?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&text);
                }
            }
            Ok(Event::CData(t)) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Ok(Event::End(_)) => {
                let done = stack.pop().ok_or("unbalanced end tag")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Ok(Event::Eof) => return Err("the document ended before its root element".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("at byte {}: {e}", reader.error_position())),
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_answers_parse_into_a_tree() {
        let doc = br#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r-1</requestId>
  <reservationSet><item><instancesSet><item>
    <instanceId>i-1</instanceId>
    <instanceState><code>16</code><name>running</name></instanceState>
    <tagSet><item><key>a&amp;b</key><value>x &lt; y</value></item></tagSet>
    <groupSet/>
  </item></instancesSet></item></reservationSet>
</DescribeInstancesResponse>"#;
        let root = parse(doc).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(root.name, "DescribeInstancesResponse");
        let inst: Vec<&Element> = root
            .items("reservationSet")
            .flat_map(|r| r.items("instancesSet"))
            .collect();
        assert_eq!(inst.len(), 1);
        assert_eq!(inst[0].text_at("instanceState/name"), Some("running"));
        let tag = inst[0]
            .items("tagSet")
            .next()
            .unwrap_or_else(|| panic!("tag"));
        assert_eq!(tag.text_at("key"), Some("a&b"));
        assert_eq!(tag.text_at("value"), Some("x < y"));
        assert!(inst[0].child("groupSet").is_some());
    }

    #[test]
    fn broken_documents_are_errors() {
        for bad in [&b""[..], b"<a><b></a>", b"<a>", b"not xml"] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
