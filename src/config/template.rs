//! The `subDir` template of an NFS pool: literal text and `${pvc.metadata.name}`,
//! `${pvc.metadata.namespace}`, `${pv.metadata.name}`, expanded from the provisioner's
//! extra metadata. Every expanded value must be one safe path component and the result a
//! relative path of safe components, so a volume's directory is always a strict
//! descendant of the export root: an empty value never collapses to the root, and `..`,
//! `/`, `\`, NUL or newline in a claim's name are refused, not cleaned.

use std::collections::BTreeMap;

use crate::safepath;

/// The provisioner's parameter keys (csi-provisioner `--extra-create-metadata`).
pub const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
pub const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
pub const PV_NAME: &str = "csi.storage.k8s.io/pv/name";
/// The default template: the PersistentVolume's name.
pub const DEFAULT: &str = "${pv.metadata.name}";
/// Top-level names berth keeps for itself on the export.
pub const RESERVED: &[&str] = &[".berth", ".berth-snapshots"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    PvcName,
    PvcNamespace,
    PvName,
}

impl Var {
    fn text(self) -> &'static str {
        match self {
            Var::PvcName => "${pvc.metadata.name}",
            Var::PvcNamespace => "${pvc.metadata.namespace}",
            Var::PvName => "${pv.metadata.name}",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Template {
    parts: Vec<Part>,
}

impl TryFrom<String> for Template {
    type Error = String;

    fn try_from(text: String) -> Result<Template, String> {
        Template::parse(&text)
    }
}

impl Default for Template {
    /// [`DEFAULT`]: the PersistentVolume's name.
    fn default() -> Template {
        Template { parts: vec![Part::Var(Var::PvName)] }
    }
}

impl Template {
    /// Parses a template; unknown variables and unsafe literal text are refused.
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.is_empty() {
            return Err("subDir template must not be empty".into());
        }
        if text.chars().any(|c| c.is_control() || c == '\\') {
            return Err(format!("subDir template {:?} contains a control character or backslash", text.escape_debug()));
        }
        if text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            return Err(format!("subDir template {text:?} must be a relative path without empty components"));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('$') {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start..];
            let end = after.find('}').filter(|_| after.starts_with("${")).ok_or_else(|| {
                format!("subDir template {text:?}: '$' must start one of ${{pvc.metadata.name}}, ${{pvc.metadata.namespace}}, ${{pv.metadata.name}}")
            })?;
            let var = match &after[..=end] {
                "${pvc.metadata.name}" => Var::PvcName,
                "${pvc.metadata.namespace}" => Var::PvcNamespace,
                "${pv.metadata.name}" => Var::PvName,
                other => return Err(format!("subDir template {text:?}: unknown variable {other}")),
            };
            parts.push(Part::Var(var));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        let template = Template { parts };
        // Literal components must be safe on their own: expand with a harmless value.
        let probe = template.render(|_| Ok("x".to_string()))?;
        check_path("subDir template", &probe)?;
        Ok(template)
    }

    fn render(&self, value: impl Fn(Var) -> Result<String, String>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Var(v) => out.push_str(&value(*v)?),
            }
        }
        Ok(out)
    }

    /// Expands the template for a volume from CreateVolume's parameters; `volume_name` (the
    /// CreateVolume name, which csi-provisioner sets to the PV name) stands in for the PV
    /// name when the provisioner sent no extra metadata.
    pub fn expand(&self, parameters: &BTreeMap<String, String>, volume_name: &str) -> Result<String, String> {
        let rendered = self.render(|var| {
            let value = match var {
                Var::PvcName => parameters.get(PVC_NAME).cloned(),
                Var::PvcNamespace => parameters.get(PVC_NAMESPACE).cloned(),
                Var::PvName => Some(parameters.get(PV_NAME).cloned().unwrap_or_else(|| volume_name.to_string())),
            }
            .ok_or_else(|| {
                format!(
                    "subDir uses {} but the request carries no {} parameter (run csi-provisioner with --extra-create-metadata)",
                    var.text(),
                    match var {
                        Var::PvcName => PVC_NAME,
                        Var::PvcNamespace => PVC_NAMESPACE,
                        Var::PvName => PV_NAME,
                    }
                )
            })?;
            safepath::component("subDir value", &value)
                .map_err(|_| format!("{} = {:?} is not a safe directory name", var.text(), value.escape_debug().to_string()))?;
            Ok(value)
        })?;
        check_path("subDir", &rendered)?;
        Ok(rendered)
    }
}

/// Checks a relative directory path on the export: safe components only, not inside
/// berth's own directories, not the root itself.
pub fn check_path(field: &'static str, value: &str) -> Result<(), String> {
    let rel = safepath::relative(field, value).map_err(|e| e.to_string())?;
    if rel.as_os_str().len() > 1024 {
        return Err(format!("{field} is {} bytes; at most 1024 are allowed", rel.as_os_str().len()));
    }
    if let Some(first) = value.split('/').next()
        && RESERVED.contains(&first)
    {
        return Err(format!("{field} {value:?} points into berth's own {first}/ directory"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_is_the_pv_name() {
        assert_eq!(Template::parse(DEFAULT), Ok(Template::default()));
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn expands_the_provisioner_metadata() {
        let t = Template::parse("${pvc.metadata.namespace}/${pvc.metadata.name}-data").expect("valid");
        let p = params(&[(PVC_NAMESPACE, "shop"), (PVC_NAME, "db"), (PV_NAME, "pvc-1")]);
        assert_eq!(t.expand(&p, "pvc-1").expect("expands"), "shop/db-data");
        let d = Template::parse(DEFAULT).expect("default");
        assert_eq!(d.expand(&p, "other").expect("pv name"), "pvc-1");
        assert_eq!(d.expand(&BTreeMap::new(), "sanity-vol").expect("volume name"), "sanity-vol");
    }

    #[test]
    fn hostile_values_are_refused_not_cleaned() {
        let t = Template::parse("${pvc.metadata.namespace}/${pvc.metadata.name}").expect("valid");
        for bad in ["..", ".", "", "a/b", "a\\b", "a\0b", "a\nb", "/etc"] {
            let p = params(&[(PVC_NAMESPACE, "ns"), (PVC_NAME, bad)]);
            assert!(t.expand(&p, "x").is_err(), "{bad:?}");
        }
        assert!(t.expand(&params(&[(PVC_NAME, "a")]), "x").is_err(), "missing namespace");
        let reserved = Template::parse("${pvc.metadata.name}").expect("valid");
        assert!(reserved.expand(&params(&[(PVC_NAME, ".berth")]), "x").is_err());
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            "${pvc.name}",
            "$HOME",
            "${pv.metadata.name",
            "a\\b",
            ".berth/x",
            "x\ny",
            ".",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Template::parse("static/${pv.metadata.name}").is_ok());
    }
}
