//! Feature definitions (FDL XML): what the adapter reads of a feature, namely its
//! commands, properties and their data types, which give the wire layout of each
//! message.

use crate::instrument::Error;
use std::collections::BTreeMap;

/// A SiLA data type, as the FDL gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum DataType {
    String,
    Integer,
    Real,
    Boolean,
    Date,
    Time,
    Timestamp,
    List(Box<DataType>),
    /// Named elements, each of its own type (field N is the Nth element).
    Structure(Vec<Element>),
    /// A type the feature defines (`DataTypeIdentifier`): its definition, wrapped
    /// once more on the wire (field 1 holds it).
    Custom(String, Box<DataType>),
    /// A type this adapter does not handle, by its FDL name.
    Unsupported(String),
}

impl DataType {
    /// The type as the FDL would name it, for messages.
    pub fn name(&self) -> String {
        match self {
            DataType::String => "String".into(),
            DataType::Integer => "Integer".into(),
            DataType::Real => "Real".into(),
            DataType::Boolean => "Boolean".into(),
            DataType::Date => "Date".into(),
            DataType::Time => "Time".into(),
            DataType::Timestamp => "Timestamp".into(),
            DataType::List(item) => format!("List of {}", item.name()),
            DataType::Structure(elements) => format!(
                "Structure ({})",
                elements
                    .iter()
                    .map(|e| e.identifier.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DataType::Custom(name, _) => name.clone(),
            DataType::Unsupported(name) => name.clone(),
        }
    }

    /// The type of the value at `path` inside this one (`Count.Viability`: the
    /// element `Viability` of the structure); the type itself for an empty path.
    pub fn at(&self, path: &[&str]) -> Option<&DataType> {
        match (self, path) {
            (_, []) => Some(self),
            (DataType::Custom(_, inner), _) => inner.at(path),
            (DataType::Structure(elements), [first, rest @ ..]) => elements
                .iter()
                .find(|e| e.identifier == *first)
                .and_then(|e| e.data_type.at(rest)),
            _ => None,
        }
    }

    /// Can a value of this type become a number (a process parameter reading)?
    pub fn is_numeric(&self) -> bool {
        match self {
            DataType::Real | DataType::Integer => true,
            DataType::Custom(_, inner) => inner.is_numeric(),
            _ => false,
        }
    }
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
        // Custom data types, by identifier, for the elements that name them.
        let definitions: BTreeMap<String, roxmltree::Node> = root
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "DataTypeDefinition")
            .filter_map(|n| Some((text_of(n, "Identifier")?, n)))
            .collect();
        let types = Types {
            definitions: &definitions,
        };
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
                        parameters: types.elements(node, "Parameter")?,
                        responses: types.elements(node, "Response")?,
                        intermediate_responses: types.elements(node, "IntermediateResponse")?,
                    };
                    feature.commands.insert(command.identifier.clone(), command);
                }
                "Property" => {
                    let property = Property {
                        element: types.element(node)?,
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

/// Reads data types, resolving the custom types the feature defines.
struct Types<'d, 'a, 'i> {
    definitions: &'d BTreeMap<String, roxmltree::Node<'a, 'i>>,
}

/// How deep types may nest (custom types naming custom types, structures in lists):
/// deeper is refused, which also stops a definition that names itself.
const MAX_DEPTH: usize = 16;

impl Types<'_, '_, '_> {
    fn elements(&self, node: roxmltree::Node<'_, '_>, name: &str) -> Result<Vec<Element>, Error> {
        node.children()
            .filter(|n| n.is_element() && n.tag_name().name() == name)
            .map(|n| self.element(n))
            .collect()
    }

    fn element(&self, node: roxmltree::Node<'_, '_>) -> Result<Element, Error> {
        self.element_at(node, 0)
    }

    fn element_at(&self, node: roxmltree::Node<'_, '_>, depth: usize) -> Result<Element, Error> {
        let identifier = text_of(node, "Identifier").ok_or_else(|| {
            Error::Mapping("feature definition: an element without Identifier".into())
        })?;
        let data_type = match child(node, "DataType") {
            Some(n) => self.data_type(n, depth)?,
            None => DataType::Unsupported("none".into()),
        };
        Ok(Element {
            identifier,
            data_type,
        })
    }

    fn data_type(&self, node: roxmltree::Node<'_, '_>, depth: usize) -> Result<DataType, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::Mapping(format!(
                "feature definition: data types nest deeper than {MAX_DEPTH} levels (a custom type that names itself?)"
            )));
        }
        let Some(inner) = node.children().find(|n| n.is_element()) else {
            return Ok(DataType::Unsupported("empty".into()));
        };
        let nested = |name: &str| match child(inner, "DataType") {
            Some(n) => self.data_type(n, depth + 1),
            None => Ok(DataType::Unsupported(name.into())),
        };
        Ok(match inner.tag_name().name() {
            "Basic" => match inner.text().map(str::trim) {
                Some("String") => DataType::String,
                Some("Integer") => DataType::Integer,
                Some("Real") => DataType::Real,
                Some("Boolean") => DataType::Boolean,
                Some("Date") => DataType::Date,
                Some("Time") => DataType::Time,
                Some("Timestamp") => DataType::Timestamp,
                other => DataType::Unsupported(other.unwrap_or("Basic").to_owned()),
            },
            "Constrained" => nested("Constrained")?,
            "List" => DataType::List(Box::new(nested("List")?)),
            "Structure" => DataType::Structure(
                inner
                    .children()
                    .filter(|n| n.is_element() && n.tag_name().name() == "Element")
                    .map(|n| self.element_at(n, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            "DataTypeIdentifier" => {
                let name = inner.text().map(str::trim).unwrap_or_default();
                let definition = self.definitions.get(name).ok_or_else(|| {
                    Error::Mapping(format!(
                        "feature definition: data type {name:?} is used but not defined"
                    ))
                })?;
                let definition = child(*definition, "DataType").ok_or_else(|| {
                    Error::Mapping(format!(
                        "feature definition: data type {name:?} has no DataType"
                    ))
                })?;
                DataType::Custom(
                    name.to_owned(),
                    Box::new(self.data_type(definition, depth + 1)?),
                )
            }
            other => DataType::Unsupported(other.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_custom_type_that_names_itself_is_refused_not_followed_for_ever() {
        let fdl = r#"<Feature Originator="org.example" Category="test" FeatureVersion="1.0">
  <Identifier>Loop</Identifier>
  <Property><Identifier>P</Identifier><Observable>No</Observable>
    <DataType><DataTypeIdentifier>Again</DataTypeIdentifier></DataType></Property>
  <DataTypeDefinition><Identifier>Again</Identifier>
    <DataType><DataTypeIdentifier>Again</DataTypeIdentifier></DataType></DataTypeDefinition>
</Feature>"#;
        let refused = Feature::from_fdl(fdl).expect_err("a loop");
        assert!(refused.to_string().contains("nest deeper"), "{refused}");
        let undefined = fdl.replace(
            "<Identifier>Again</Identifier>",
            "<Identifier>Other</Identifier>",
        );
        let refused = Feature::from_fdl(&undefined).expect_err("undefined");
        assert!(
            refused
                .to_string()
                .contains("\"Again\" is used but not defined"),
            "{refused}"
        );
    }

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
        assert_eq!(
            feature.properties["LastCalibration"].element.data_type,
            DataType::Timestamp
        );
        let count = &feature.commands["CountSample"];
        assert_eq!(count.parameters[0].data_type, DataType::Date);
        assert_eq!(count.parameters[1].data_type, DataType::Time);
        let response = &count.responses[0].data_type;
        assert_eq!(response.name(), "CellCount");
        assert_eq!(response.at(&["DrawnAt"]), Some(&DataType::Timestamp));
        assert!(response
            .at(&["Viability"])
            .is_some_and(DataType::is_numeric));
        assert_eq!(response.at(&["Viabilty"]), None);
        assert!(!feature.properties["TemperatureSetpoint"].observable);
    }
}
