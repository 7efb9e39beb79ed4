//! The JUnit XML report of a run of cases (one test suite, named after
//! the plugin; one test case per case).

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use super::{one_line, Report};
use crate::plugin::PluginInfo;

impl Report {
    /// The report as JUnit XML: one `<testsuite>` named after `plugin`
    /// (with its path and version as properties), one `<testcase>` per
    /// case, classname `PLUGIN.TASK`, and for each failed case a
    /// `<failure>` whose message says what was expected and got and whose
    /// text is the heading and the diff.
    pub fn junit_xml(&self, plugin: &PluginInfo) -> String {
        // Serializing to memory fails only on a bug in quick-junit.
        self.junit(plugin)
            .to_string()
            .unwrap_or_else(|e| format!("<!-- cannot serialize the JUnit report: {e} -->\n"))
    }

    /// Writes [`Report::junit_xml`] to `w`.
    pub fn write_junit(&self, plugin: &PluginInfo, w: impl std::io::Write) -> std::io::Result<()> {
        self.junit(plugin)
            .serialize(w)
            .map_err(std::io::Error::other)
    }

    fn junit(&self, info: &PluginInfo) -> quick_junit::Report {
        let mut report = quick_junit::Report::new("billiard-host check");
        let mut suite = TestSuite::new(info.name.as_str());
        suite.set_time(self.elapsed);
        suite.add_property(("plugin", info.path.display().to_string().as_str()));
        suite.add_property(("version", info.version.as_str()));
        for r in &self.results {
            let status = if r.passed {
                TestCaseStatus::success()
            } else {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!(
                    "expected {}, got {}",
                    one_line(&r.case.expect.summary(), 200),
                    one_line(&r.got_summary(), 200)
                ));
                s.set_type("mismatch");
                let body: Vec<String> = r.diff().iter().map(|l| l.to_string()).collect();
                s.set_description(format!(
                    "{}\n- expected + got\n{}",
                    r.heading(None),
                    body.join("\n")
                ));
                s
            };
            let mut tc = TestCase::new(r.case.name.as_str(), status);
            tc.set_classname(format!("{}.{}", info.name, r.case.task));
            if let Some(d) = r.elapsed {
                tc.set_time(d);
            }
            suite.add_test_case(tc);
        }
        report.add_test_suite(suite);
        report.set_time(self.elapsed);
        report
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::super::{Case, CaseResult, Expect};
    use super::*;
    use crate::error::{ErrorKind, TaskError};

    fn info() -> PluginInfo {
        // From JSON, so that a field added to PluginInfo (with a serde
        // default) does not need an edit here.
        serde_json::from_value(json!({
            "path": "/p/libmath.so",
            "name": "math",
            "version": "0.1.0",
            "abi_version": 1,
            "api_version": "0.1.0",
            "tasks": [],
        }))
        .expect("a PluginInfo")
    }

    #[test]
    fn failures_carry_the_diff_and_xml_is_escaped() {
        let report = Report {
            results: vec![
                CaseResult::new(
                    Case::new("square", json!([3]), Expect::Ok(json!(9))),
                    Ok(json!(9)),
                    Some(Duration::from_millis(2)),
                ),
                CaseResult::new(
                    Case::new("add", json!([1, 2]), Expect::Ok(json!("<4>"))).named("a & b"),
                    Err(TaskError::new(ErrorKind::Panic, "boom <here>")),
                    None,
                ),
            ],
            elapsed: Duration::from_millis(10),
        };
        let xml = report.junit_xml(&info());
        assert!(xml.starts_with("<?xml"), "{xml}");
        assert!(xml.contains("tests=\"2\""), "{xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(xml.contains("name=\"a &amp; b\""), "{xml}");
        assert!(xml.contains("classname=\"math.add\""), "{xml}");
        assert!(
            xml.contains(
                "message=\"expected ok &quot;&lt;4&gt;&quot;, got panic: boom &lt;here&gt;\""
            ),
            "{xml}"
        );
        assert!(
            xml.contains("+   &quot;error&quot;: &quot;panic&quot;"),
            "{xml}"
        );
        assert!(
            xml.contains("name=\"plugin\" value=\"/p/libmath.so\""),
            "{xml}"
        );
        let mut written = Vec::new();
        report.write_junit(&info(), &mut written).unwrap();
        assert_eq!(String::from_utf8(written).unwrap(), xml);
    }
}
