//! Feature definitions (FDL XML): what the adapter reads of a feature, namely its
//! commands, properties and their data types, which give the wire layout of each
//! message.

use crate::instrument::Error;
use std::collections::BTreeMap;

/// A SiLA basic type, as the FDL names it.
#[derive(Debug, Clone, PartialEq)]
pub enum DataType {
    String,
    Integer,
    Real,
    Boolean,
    List(Box<DataType>),
    /// A type this adapter does not handle, by its FDL name.
    Unsupported(String),
}

/// A parameter, response, intermediate response or property: identifier and type.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub identifier: String,
    pub data_type: DataType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub identifier: String,
    pub observable: bool,
    pub parameters: Vec<Element>,
    pub responses: Vec<Element>,
    pub intermediate_responses: Vec<Element>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    pub element: Element,
    pub observable: bool,
}

/// What the adapter needs of a feature definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// Fully qualified identifier, e.g. `org.carrel/bioprocess/CellExpansionController/v1`.
    pub fully_qualified: String,
    /// gRPC service path, e.g. `/sila2.org.carrel.bioprocess.cellexpansioncontroller.v1.CellExpansionController`.
    pub service: String,
    pub commands: BTreeMap<String, Command>,
    pub properties: BTreeMap<String, Property>,
}

impl Feature {
    /// Parses a feature definition (FDL XML).
    pub fn from_fdl(xml: &str) -> Result<Feature, Error> {
        let bad = |what: &str| Error::Mapping(format!("feature definition: {what}"));
        let doc =
            roxmltree::Document::parse(xml).map_err(|e| bad(&format!("not valid XML: {e}")))?;
        let root = doc.root_element();
        if root.tag_name().name() != "Feature" {
            return Err(bad("the root element is not <Feature>"));
        }
        let originator = root
            .attribute("Originator")
            .ok_or_else(|| bad("no Originator"))?;
        let category = root.attribute("Category").unwrap_or("none");
        let major = root
            .attribute("FeatureVersion")
            .and_then(|v| v.split('.').next())
            .ok_or_else(|| bad("no FeatureVersion"))?;
        let identifier = text_of(root, "Identifier").ok_or_else(|| bad("no Identifier"))?;
        let package = format!(
            "sila2.{originator}.{category}.{}.v{major}",
            identifier.to_ascii_lowercase()
        );
        let mut feature = Feature {
            fully_qualified: format!("{originator}/{category}/{identifier}/v{major}"),
            service: format!("/{package}.{identifier}"),
            commands: BTreeMap::new(),
            properties: BTreeMap::new(),
        };
        for node in root.children().filter(|n| n.is_element()) {
            match node.tag_name().name() {
                "Command" => {
                    let command = Command {
                        identifier: text_of(node, "Identifier")
                            .ok_or_else(|| bad("a command without Identifier"))?,
                        observable: text_of(node, "Observable").as_deref() == Some("Yes"),
                        parameters: elements(node, "Parameter")?,
                        responses: elements(node, "Response")?,
                        intermediate_responses: elements(node, "IntermediateResponse")?,
                    };
                    feature.commands.insert(command.identifier.clone(), command);
                }
                "Property" => {
                    let property = Property {
                        element: element(node)?,
                        observable: text_of(node, "Observable").as_deref() == Some("Yes"),
                    };
                    feature
                        .properties
                        .insert(property.element.identifier.clone(), property);
                }
                _ => {}
            }
        }
        Ok(feature)
    }
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

fn text_of(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned())
}

fn elements(node: roxmltree::Node<'_, '_>, name: &str) -> Result<Vec<Element>, Error> {
    node.children()
        .filter(|n| n.is_element() && n.tag_name().name() == name)
        .map(element)
        .collect()
}

fn element(node: roxmltree::Node<'_, '_>) -> Result<Element, Error> {
    let identifier = text_of(node, "Identifier").ok_or_else(|| {
        Error::Mapping("feature definition: an element without Identifier".into())
    })?;
    let data_type = child(node, "DataType")
        .map(data_type)
        .unwrap_or(DataType::Unsupported("none".into()));
    Ok(Element {
        identifier,
        data_type,
    })
}

fn data_type(node: roxmltree::Node<'_, '_>) -> DataType {
    let Some(inner) = node.children().find(|n| n.is_element()) else {
        return DataType::Unsupported("empty".into());
    };
    match inner.tag_name().name() {
        "Basic" => match inner.text().map(str::trim) {
            Some("String") => DataType::String,
            Some("Integer") => DataType::Integer,
            Some("Real") => DataType::Real,
            Some("Boolean") => DataType::Boolean,
            other => DataType::Unsupported(other.unwrap_or("Basic").to_owned()),
        },
        "Constrained" => child(inner, "DataType")
            .map(data_type)
            .unwrap_or(DataType::Unsupported("Constrained".into())),
        "List" => DataType::List(Box::new(
            child(inner, "DataType")
                .map(data_type)
                .unwrap_or(DataType::Unsupported("List".into())),
        )),
        other => DataType::Unsupported(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDL: &str = include_str!("../../../../tests/peers/sila/CellExpansionController.sila.xml");

    #[test]
    fn feature_definition_gives_wire_layout() {
        let feature = Feature::from_fdl(FDL).expect("our FDL parses");
        assert_eq!(
            feature.fully_qualified,
            "org.carrel/bioprocess/CellExpansionController/v1"
        );
        assert_eq!(
            feature.service,
            "/sila2.org.carrel.bioprocess.cellexpansioncontroller.v1.CellExpansionController"
        );
        let run = &feature.commands["RunExpansion"];
        assert!(run.observable);
        let names: Vec<_> = run
            .parameters
            .iter()
            .map(|p| p.identifier.as_str())
            .collect();
        assert_eq!(names, ["DurationHours", "TargetDensity", "BatchId"]);
        assert_eq!(run.parameters[2].data_type, DataType::String);
        assert_eq!(run.intermediate_responses.len(), 2);
        assert!(!feature.commands["SetTemperatureSetpoint"].observable);
        assert!(feature.properties["CurrentTemperature"].observable);
        assert!(!feature.properties["TemperatureSetpoint"].observable);
    }
}
