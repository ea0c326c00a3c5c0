//! The Glue database and table over the bucket, so Athena can query the aggregates, and their
//! partitions: one registered per `componentName=` prefix found in the bucket, or projection
//! over the components the spec lists. Ownership is recorded in the objects' parameters.
//!
//! The table reads one format: a table (and its partitions) whose format would change while
//! objects of the old one are in the bucket is refused ([`Error::UnsafeChange`]), since Athena
//! reads every object of a prefix with one SerDe. The S3 prefixes (`componentName=`) and the
//! partition column (`componentname`) are spelled differently, so every location is explicit.

use std::collections::{BTreeSet, HashMap};

use aws_sdk_glue::types::{Column, Database, DatabaseInput, PartitionInput, SerDeInfo, StorageDescriptor, Table, TableInput};
use metrics_pipeline_api::config::PartitionConfig;
use metrics_pipeline_api::pipeline::{AwsResourceRef, DeliveryFormat};

use super::{AwsClients, AwsResource, TagsAs, partition};
use crate::error::{AwsError, AwsErrorKind, AwsResultExt, Error};
use crate::managed::{Outcome, Owner, Removal, Standing};

/// Glue's answer for a database or table that does not exist.
const NOT_FOUND: &str = "EntityNotFoundException";

/// The partition column as Athena names it. Athena lower-cases every column name when it runs a
/// query and looks up the column's `projection.<name>.*` properties and its `${<name>}`
/// placeholder in `storage.location.template` by that lower-case name: a camelCase key would
/// find no projection, and Glue asks for lower-case names anyway.
pub const PARTITION_COLUMN: &str = "componentname";
/// The key of the S3 prefixes Firehose and the aggregator write: `componentName=<value>/`. Not
/// the column's spelling (S3 keys are case-sensitive), so no location is left to Hive's default
/// `<column>=<value>/`: registered partitions name theirs, projection has a location template.
pub const PREFIX_KEY: &str = "componentName";
const JSON_SERDE: &str = "org.openx.data.jsonserde.JsonSerDe";
const PARQUET_SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";
/// Glue takes at most 100 partitions per BatchCreatePartition.
const MAX_PARTITIONS_PER_CALL: usize = 100;

/// The aggregate's fields as Athena reads them (names are case-insensitive there).
const COLUMNS: [(&str, &str); 12] = [
    ("metricName", "string"),
    ("unit", "string"),
    ("minValue", "double"),
    ("maxValue", "double"),
    ("avgValue", "double"),
    ("count", "bigint"),
    ("sum", "double"),
    ("fromTimestamp", "timestamp"),
    ("toTimestamp", "timestamp"),
    ("windowStart", "timestamp"),
    ("windowEnd", "timestamp"),
    ("windowId", "string"),
];
const REVISION_COLUMN: (&str, &str) = ("revision", "int");

/// What the table looks like: everything the operator decides about it.
pub struct TableSpec<'a> {
    pub database: &'a str,
    pub table: &'a str,
    pub bucket: &'a str,
    pub format: DeliveryFormat,
    pub partitions: &'a PartitionConfig,
    pub owner: &'a Owner,
}

fn columns() -> Vec<Column> {
    COLUMNS
        .iter()
        .chain([&REVISION_COLUMN])
        .map(|(name, kind)| Column::builder().name(*name).r#type(*kind).build().expect("name is set"))
        .collect()
}

/// Storage of the table, or of one partition at `location`.
pub fn storage(format: DeliveryFormat, location: String) -> StorageDescriptor {
    let (input, output, serde, parameters): (&str, &str, &str, &[(&str, &str)]) = match format {
        DeliveryFormat::Json => (
            "org.apache.hadoop.mapred.TextInputFormat",
            "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
            JSON_SERDE,
            // Column names are lower case in Athena; the records are camelCase.
            &[("case.insensitive", "TRUE"), ("ignore.malformed.json", "FALSE")],
        ),
        DeliveryFormat::Parquet => (
            "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
            "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
            PARQUET_SERDE,
            &[],
        ),
    };
    let serde_info = SerDeInfo::builder()
        .serialization_library(serde)
        .set_parameters(Some(parameters.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
        .build();
    StorageDescriptor::builder()
        .set_columns(Some(columns()))
        .location(location)
        .input_format(input)
        .output_format(output)
        .serde_info(serde_info)
        .build()
}

pub fn partition_location(bucket: &str, component: &str) -> String {
    format!("s3://{bucket}/{PREFIX_KEY}={component}/")
}

/// The format a table reads, by its SerDe; `None` for a SerDe the operator never sets.
fn format_of(storage: Option<&StorageDescriptor>) -> Option<DeliveryFormat> {
    match storage?.serde_info()?.serialization_library()? {
        JSON_SERDE => Some(DeliveryFormat::Json),
        PARQUET_SERDE => Some(DeliveryFormat::Parquet),
        _ => None,
    }
}

/// The exact TableInput of CreateTable/UpdateTable.
pub fn desired_table(spec: &TableSpec<'_>) -> TableInput {
    let mut parameters: HashMap<String, String> =
        [("EXTERNAL", "TRUE"), ("classification", if spec.format == DeliveryFormat::Json { "json" } else { "parquet" })]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .chain(spec.owner.ownership())
            .collect();
    if let PartitionConfig::Projected(components) = spec.partitions {
        parameters.insert("projection.enabled".into(), "true".into());
        parameters.insert(format!("projection.{PARTITION_COLUMN}.type"), "enum".into());
        parameters.insert(format!("projection.{PARTITION_COLUMN}.values"), components.join(","));
        parameters.insert("storage.location.template".into(), format!("s3://{}/{PREFIX_KEY}=${{{PARTITION_COLUMN}}}/", spec.bucket));
    }
    TableInput::builder()
        .name(spec.table)
        .description("Windowed metric aggregates written by Firehose; one partition per componentName")
        .table_type("EXTERNAL_TABLE")
        .set_parameters(Some(parameters))
        .storage_descriptor(storage(spec.format, format!("s3://{}/", spec.bucket)))
        .partition_keys(Column::builder().name(PARTITION_COLUMN).r#type("string").build().expect("name is set"))
        .build()
        .expect("name is set")
}

/// What it takes to turn the table as found into the desired one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TablePlan {
    Create,
    Keep,
    Update,
    /// Glue keeps each partition under the table's partition keys: a renamed key needs a new
    /// table (UpdateTable cannot carry the partitions over), whose partitions are registered anew.
    Recreate(String),
    /// The table would read another format: safe only while no object is in the bucket, and then
    /// by a new table, so no partition keeps the old SerDe.
    ChangeFormat {
        from: DeliveryFormat,
        to: DeliveryFormat,
    },
}

pub fn table_plan(found: Option<&Table>, desired: &TableInput, format: DeliveryFormat) -> TablePlan {
    let Some(found) = found else { return TablePlan::Create };
    if let Some(from) = format_of(found.storage_descriptor()).filter(|from| *from != format) {
        return TablePlan::ChangeFormat { from, to: format };
    }
    // Exact spelling: Athena would not find `componentName`'s projection under `componentname`.
    let keys = |columns: &[Column]| columns.iter().map(|c| format!("{} {}", c.name(), c.r#type().unwrap_or_default())).collect::<Vec<_>>();
    let (found_keys, desired_keys) = (keys(found.partition_keys()), keys(desired.partition_keys()));
    if found_keys != desired_keys {
        return TablePlan::Recreate(format!("its partition keys are [{}], not [{}]", found_keys.join(", "), desired_keys.join(", ")));
    }
    if table_differences(found, desired).is_empty() { TablePlan::Keep } else { TablePlan::Update }
}

/// A refused format change: what it would break, and the ways to get the new format.
pub fn unsafe_format_change(from: DeliveryFormat, to: DeliveryFormat, object: &str) -> Error {
    Error::UnsafeChange {
        field: "spec.delivery.format",
        message: format!(
            "cannot change from {from:?} to {to:?}: the bucket holds {from:?} objects ({object}) and Athena reads every object \
             under a prefix with the table's one SerDe, so {to:?} files beside them would make the prefix unreadable. Set it back \
             to {from:?}; or, to keep the {from:?} data readable and write {to:?} from now on, delete this pipeline with \
             deletionPolicy: Retain (its bucket and its Glue database and table stay) and create it again under a new \
             spec.namePrefix (and new spec.delivery.bucketName and spec.catalog.database if you set them); or, if the {from:?} \
             data may go, delete the bucket's {PREFIX_KEY}= objects and the change goes through"
        ),
    }
}

/// Every way the table as it is differs from `desired` in what the operator decides, partition
/// keys aside ([`table_plan`] compares those); none: it matches.
fn table_differences(found: &Table, desired: &TableInput) -> Vec<String> {
    let Some(desired_storage) = desired.storage_descriptor() else { return Vec::new() };
    let Some(found_storage) = found.storage_descriptor() else { return vec!["it has no storage descriptor".to_owned()] };
    let mut differences = Vec::new();
    let (found_parameters, desired_parameters) = (found.parameters().cloned().unwrap_or_default(), desired.parameters());
    let keys: BTreeSet<&String> = found_parameters.keys().chain(desired_parameters.into_iter().flat_map(HashMap::keys)).collect();
    for key in keys {
        let (has, wants) = (found_parameters.get(key), desired_parameters.and_then(|parameters| parameters.get(key)));
        if has != wants {
            let said = |value: Option<&String>| value.map_or("unset".to_owned(), |value| format!("`{value}`"));
            differences.push(format!("table parameter {key} is {}, the operator sets {}", said(has), said(wants)));
        }
    }
    let columns = |columns: &[Column]| {
        columns.iter().map(|c| format!("{} {}", c.name().to_ascii_lowercase(), c.r#type().unwrap_or_default())).collect::<Vec<_>>()
    };
    let (found_columns, desired_columns) = (columns(found_storage.columns()), columns(desired_storage.columns()));
    if found_columns != desired_columns {
        differences.push(format!("its columns are [{}], the operator sets [{}]", found_columns.join(", "), desired_columns.join(", ")));
    }
    let mut compare = |what: &str, has: Option<&str>, wants: Option<&str>| {
        if has != wants {
            differences.push(format!("its {what} is `{}`, the operator sets `{}`", has.unwrap_or_default(), wants.unwrap_or_default()));
        }
    };
    compare("location", found_storage.location(), desired_storage.location());
    compare("input format", found_storage.input_format(), desired_storage.input_format());
    let serde = |storage: &StorageDescriptor| storage.serde_info().and_then(|s| s.serialization_library()).map(str::to_owned);
    compare("SerDe", serde(found_storage).as_deref(), serde(desired_storage).as_deref());
    differences
}

pub fn database_arn(region: &str, account_id: &str, database: &str) -> String {
    format!("arn:{}:glue:{region}:{account_id}:database/{database}", partition(region))
}

pub fn table_arn(region: &str, account_id: &str, database: &str, table: &str) -> String {
    format!("arn:{}:glue:{region}:{account_id}:table/{database}/{table}", partition(region))
}

/// Glue objects carry ownership as parameters, as AWS resources carry it as tags.
fn parameters(parameters: Option<&HashMap<String, String>>) -> impl Iterator<Item = (&str, &str)> {
    parameters.into_iter().flatten().map(|(key, value)| (key.as_str(), value.as_str()))
}

/// A pipeline's Glue database.
pub struct GlueDatabase<'a> {
    pub name: &'a str,
    pub account_id: &'a str,
}

/// What to do about the database: it holds the table, and nothing about it is the spec's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabasePlan {
    Create,
    Keep,
}

/// The database as Glue describes it, and its tags (its ownership is in its parameters).
pub struct FoundDatabase {
    pub database: Database,
    pub tags: Vec<(String, String)>,
}

impl GlueDatabase<'_> {
    fn arn(&self, clients: &AwsClients) -> String {
        database_arn(&clients.region, self.account_id, self.name)
    }

    fn located(&self, clients: &AwsClients) -> AwsResourceRef {
        AwsResourceRef { name: self.name.to_owned(), arn: Some(self.arn(clients)) }
    }

    /// Adds `tags` to the database's tags (TagResource keeps the others).
    async fn tag(&self, clients: &AwsClients, tags: &[(String, String)]) -> Result<(), Error> {
        let database = self.name;
        let arn = self.arn(clients);
        clients.tags.forget(&arn);
        let request = clients.glue.tag_resource().resource_arn(arn).set_tags_to_add(Some(tags.iter().cloned().collect()));
        request.send().await.or_aws(|| format!("tagging Glue database {database}"))?;
        Ok(())
    }
}

impl AwsResource for GlueDatabase<'_> {
    const KIND: &'static str = "Glue database";
    type Desired = ();
    type Observed = FoundDatabase;
    type Plan = DatabasePlan;

    fn name(&self) -> String {
        self.name.to_owned()
    }

    /// Its tags (only `spec.tags`: ownership is in its parameters) are read as a stream's are,
    /// once per hold of the tag cache, not at every reconcile.
    async fn observe(&self, clients: &AwsClients, tags_as: TagsAs) -> Result<Option<FoundDatabase>, Error> {
        let database = self.name;
        let found = clients.glue.get_database().name(database).send().await;
        let Some(found) = found.absent_on(&[NOT_FOUND], || format!("reading Glue database {database}"))?.and_then(|output| output.database)
        else {
            return Ok(None);
        };
        let arn = self.arn(clients);
        let read = async {
            let tags = clients.glue.get_tags().resource_arn(&arn).send().await;
            Ok(tags.or_aws(|| format!("reading the tags of Glue database {database}"))?.tags.unwrap_or_default().into_iter().collect())
        };
        let created = found.create_time.map(|time| time.secs().to_string()).unwrap_or_default();
        let tags = clients.tags.read_as(tags_as, &arn, created, read).await?;
        Ok(Some(FoundDatabase { database: found, tags }))
    }

    fn whose(owner: &Owner, observed: &FoundDatabase) -> Standing {
        owner.standing(parameters(observed.database.parameters()))
    }

    /// Its ownership goes into its parameters, `spec.tags` into its tags.
    async fn claim(&self, clients: &AwsClients, owner: &Owner, found: &FoundDatabase) -> Result<(), Error> {
        let database = self.name;
        let FoundDatabase { database: found, .. } = found;
        if owner.standing(parameters(found.parameters())) != Standing::Ours {
            // UpdateDatabase replaces the whole definition: everything else is kept as found.
            let mut kept = found.parameters().cloned().unwrap_or_default();
            kept.extend(owner.ownership());
            let input = DatabaseInput::builder()
                .name(database)
                .set_description(found.description().map(str::to_owned))
                .set_location_uri(found.location_uri().map(str::to_owned))
                .set_create_table_default_permissions(found.create_table_default_permissions.clone())
                .set_target_database(found.target_database().cloned())
                .set_federated_database(found.federated_database().cloned())
                .set_parameters(Some(kept))
                .build()
                .expect("name is set");
            let update = clients.glue.update_database().name(database).database_input(input).send().await;
            update.or_aws(|| format!("marking Glue database {database} as the pipeline's"))?;
        }
        if !owner.user_tags.is_empty() {
            self.tag(clients, &owner.user_tags).await?;
        }
        Ok(())
    }

    fn tags_of(observed: &FoundDatabase) -> Option<Vec<(String, String)>> {
        let ownership = parameters(observed.database.parameters()).map(|(key, value)| (key.to_owned(), value.to_owned()));
        Some(ownership.chain(observed.tags.iter().cloned()).collect())
    }

    async fn untag(&self, clients: &AwsClients, _observed: &FoundDatabase, keys: &[String]) -> Result<(), Error> {
        let database = self.name;
        let arn = self.arn(clients);
        clients.tags.forget(&arn);
        let request = clients.glue.untag_resource().resource_arn(arn).set_tags_to_remove(Some(keys.to_vec()));
        request.send().await.or_aws(|| format!("removing tags from Glue database {database}"))?;
        Ok(())
    }

    fn plan(_desired: &(), observed: Option<&FoundDatabase>) -> DatabasePlan {
        if observed.is_some() { DatabasePlan::Keep } else { DatabasePlan::Create }
    }

    async fn drift(&self, _clients: &AwsClients, _desired: &(), _observed: &FoundDatabase) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }

    fn reference(&self, clients: &AwsClients, _observed: &FoundDatabase) -> AwsResourceRef {
        self.located(clients)
    }

    async fn apply(
        &self,
        clients: &AwsClients,
        owner: &Owner,
        _desired: &(),
        _observed: Option<FoundDatabase>,
        plan: DatabasePlan,
        mut outcome: Outcome,
    ) -> Result<(AwsResourceRef, Outcome), Error> {
        let database = self.name;
        if plan == DatabasePlan::Create {
            let input = DatabaseInput::builder()
                .name(database)
                .description(format!("Metrics pipeline {}", owner.pipeline))
                .set_parameters(Some(owner.ownership().into_iter().collect()))
                .build()
                .expect("name is set");
            clients.glue.create_database().database_input(input).send().await.or_aws(|| format!("creating Glue database {database}"))?;
            if !owner.user_tags.is_empty() {
                self.tag(clients, &owner.user_tags).await?;
            }
            outcome.changed(format!("created Glue database {database}"));
        }
        Ok((self.located(clients), outcome))
    }

    /// Deletes the database if it holds no other table: DeleteDatabase deletes every table in it.
    async fn remove(&self, clients: &AwsClients, _observed: FoundDatabase) -> Result<Removal, Error> {
        let database = self.name;
        // Glue has no conditional delete: a table made between this look and the deletion goes
        // with the database.
        let others = tables_in(clients, database).await?;
        if !others.is_empty() {
            return Ok(Removal::Left(format!(
                "kept Glue database {database}: it holds tables that are not this pipeline's ({})",
                others.join(", ")
            )));
        }
        let deleted = clients.glue.delete_database().name(database).send().await;
        deleted.absent_on(&[NOT_FOUND], || format!("deleting Glue database {database}"))?;
        Ok(Removal::Gone)
    }
}

impl GlueTable<'_> {
    fn located(&self, clients: &AwsClients) -> AwsResourceRef {
        AwsResourceRef { name: self.table.to_owned(), arn: Some(table_arn(&clients.region, self.account_id, self.database, self.table)) }
    }
}

/// A pipeline's Glue table.
pub struct GlueTable<'a> {
    pub database: &'a str,
    pub table: &'a str,
    pub account_id: &'a str,
}

/// The table the spec asks for: its definition, the format it reads, the bucket it reads and how
/// its partitions are known.
pub struct DesiredTable<'a> {
    pub input: TableInput,
    pub format: DeliveryFormat,
    pub bucket: &'a str,
    pub partitions: &'a PartitionConfig,
}

impl<'a> DesiredTable<'a> {
    pub fn of(spec: &TableSpec<'a>) -> Self {
        Self { input: desired_table(spec), format: spec.format, bucket: spec.bucket, partitions: spec.partitions }
    }
}

impl<'a> AwsResource for GlueTable<'a> {
    const KIND: &'static str = "Glue table";
    type Desired = DesiredTable<'a>;
    type Observed = Table;
    type Plan = TablePlan;

    fn name(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    async fn observe(&self, clients: &AwsClients, _tags: TagsAs) -> Result<Option<Table>, Error> {
        let (database, table) = (self.database, self.table);
        let found = clients.glue.get_table().database_name(database).name(table).send().await;
        Ok(found.absent_on(&[NOT_FOUND], || format!("reading Glue table {database}.{table}"))?.and_then(|output| output.table))
    }

    fn whose(owner: &Owner, observed: &Table) -> Standing {
        owner.standing(parameters(observed.parameters()))
    }

    /// Nothing to do: its parameters differ from the desired ones, so the plan updates them.
    async fn claim(&self, _clients: &AwsClients, _owner: &Owner, _observed: &Table) -> Result<(), Error> {
        Ok(())
    }

    /// Glue tags no tables: its ownership is in its parameters, which the plan keeps.
    fn tags_of(_observed: &Table) -> Option<Vec<(String, String)>> {
        None
    }

    async fn untag(&self, _clients: &AwsClients, _observed: &Table, _keys: &[String]) -> Result<(), Error> {
        Ok(())
    }

    fn plan(desired: &DesiredTable<'a>, observed: Option<&Table>) -> TablePlan {
        table_plan(observed, &desired.input, desired.format)
    }

    fn replaces(plan: &TablePlan) -> Option<String> {
        match plan {
            TablePlan::Recreate(why) => Some(why.clone()),
            TablePlan::ChangeFormat { from, to } => Some(format!("its format changes from {from:?} to {to:?}")),
            _ => None,
        }
    }

    async fn drift(&self, _clients: &AwsClients, desired: &DesiredTable<'a>, observed: &Table) -> Result<Vec<String>, Error> {
        Ok(match Self::plan(desired, Some(observed)) {
            TablePlan::Recreate(why) => vec![format!("{why} (it would be created again; its partitions registered anew)")],
            TablePlan::ChangeFormat { from, to } => {
                vec![format!("it reads {from:?}, the spec asks {to:?} (refused while the bucket holds {from:?} objects)")]
            }
            TablePlan::Update => table_differences(observed, &desired.input),
            TablePlan::Create | TablePlan::Keep => Vec::new(),
        })
    }

    fn reference(&self, clients: &AwsClients, _observed: &Table) -> AwsResourceRef {
        self.located(clients)
    }

    async fn apply(
        &self,
        clients: &AwsClients,
        _owner: &Owner,
        desired: &DesiredTable<'a>,
        _observed: Option<Table>,
        plan: TablePlan,
        mut outcome: Outcome,
    ) -> Result<(AwsResourceRef, Outcome), Error> {
        let (database, table) = (self.database, self.table);
        let recreate = |why: String| async move {
            // The table holds nothing that is not derived again here: its definition comes from the
            // spec, its partitions from the bucket (registered again below); the data stays in S3.
            let deleted = clients.glue.delete_table().database_name(database).name(table).send().await;
            deleted.absent_on(&[NOT_FOUND], || format!("deleting Glue table {database}.{table} to recreate it ({why})"))?;
            create_table(clients, database, desired.input.clone()).await?;
            Ok::<_, Error>(format!("recreated Glue table {database}.{table}: {why}"))
        };
        match plan {
            TablePlan::Keep => {}
            TablePlan::Create => {
                create_table(clients, database, desired.input.clone()).await?;
                outcome.changed(format!("created Glue table {database}.{table}"));
            }
            TablePlan::Update => {
                (clients.glue.update_table())
                    .database_name(database)
                    .table_input(desired.input.clone())
                    .send()
                    .await
                    .or_aws(|| format!("updating Glue table {database}.{table}"))?;
                outcome.changed(format!("updated Glue table {database}.{table}"));
            }
            TablePlan::Recreate(why) => outcome.changed(recreate(why).await?),
            TablePlan::ChangeFormat { from, to } => match first_object(clients, desired.bucket).await? {
                Some(object) => return Err(unsafe_format_change(from, to, &format!("s3://{}/{object}", desired.bucket))),
                None => {
                    outcome.changed(recreate(format!("its format changes from {from:?} to {to:?}, and no object is written yet")).await?)
                }
            },
        }
        if matches!(desired.partitions, PartitionConfig::Registered) {
            outcome.merge(register_partitions(clients, self, desired).await?);
        }
        Ok((self.located(clients), outcome))
    }

    /// Deletes the table with its partitions; the data stays in the bucket.
    async fn remove(&self, clients: &AwsClients, _observed: Table) -> Result<Removal, Error> {
        let (database, table) = (self.database, self.table);
        let deleted = clients.glue.delete_table().database_name(database).name(table).send().await;
        deleted.absent_on(&[NOT_FOUND], || format!("deleting Glue table {database}.{table}"))?;
        Ok(Removal::Gone)
    }
}

async fn create_table(clients: &AwsClients, database: &str, desired: TableInput) -> Result<(), Error> {
    let table = desired.name().to_owned();
    let created = clients.glue.create_table().database_name(database).table_input(desired).send().await;
    created.or_aws(|| format!("creating Glue table {database}.{table}"))?;
    Ok(())
}

/// The key of one object under the data prefixes, if there is any.
async fn first_object(clients: &AwsClients, bucket: &str) -> Result<Option<String>, Error> {
    let listed = (clients.s3.list_objects_v2())
        .bucket(bucket)
        .prefix(format!("{PREFIX_KEY}="))
        .max_keys(1)
        .send()
        .await
        .or_aws(|| format!("looking for objects in S3 bucket {bucket}"))?;
    Ok(listed.contents().first().and_then(|object| object.key()).map(str::to_owned))
}

/// Components with a `componentName=` prefix in the bucket.
async fn components_in_bucket(clients: &AwsClients, bucket: &str) -> Result<BTreeSet<String>, Error> {
    let mut components = BTreeSet::new();
    let mut token = None;
    loop {
        let listed = (clients.s3.list_objects_v2())
            .bucket(bucket)
            .prefix(format!("{PREFIX_KEY}="))
            .delimiter("/")
            .set_continuation_token(token)
            .send()
            .await
            .or_aws(|| format!("listing partitions in S3 bucket {bucket}"))?;
        for prefix in listed.common_prefixes().iter().filter_map(|p| p.prefix()) {
            if let Some(value) = prefix.strip_prefix(&format!("{PREFIX_KEY}=")).and_then(|rest| rest.strip_suffix('/')) {
                components.insert(value.to_owned());
            }
        }
        token = listed.next_continuation_token.filter(|_| listed.is_truncated == Some(true));
        if token.is_none() {
            return Ok(components);
        }
    }
}

async fn registered_partitions(clients: &AwsClients, database: &str, table: &str) -> Result<BTreeSet<String>, Error> {
    let mut registered = BTreeSet::new();
    let mut token = None;
    loop {
        let page = (clients.glue.get_partitions())
            .database_name(database)
            .table_name(table)
            .set_next_token(token)
            .send()
            .await
            .or_aws(|| format!("listing partitions of Glue table {database}.{table}"))?;
        registered.extend(page.partitions().iter().filter_map(|p| p.values().first().cloned()));
        token = page.next_token;
        if token.is_none() {
            return Ok(registered);
        }
    }
}

/// Registers a partition for every component found in the bucket and not yet in the table.
async fn register_partitions(clients: &AwsClients, table: &GlueTable<'_>, desired: &DesiredTable<'_>) -> Result<Outcome, Error> {
    let mut outcome = Outcome::default();
    let found = components_in_bucket(clients, desired.bucket).await?;
    if found.is_empty() {
        return Ok(outcome);
    }
    let registered = registered_partitions(clients, table.database, table.table).await?;
    let missing: Vec<&String> = found.difference(&registered).collect();
    for chunk in missing.chunks(MAX_PARTITIONS_PER_CALL) {
        let inputs = chunk.iter().map(|component| {
            PartitionInput::builder()
                .values(component.as_str())
                .storage_descriptor(storage(desired.format, partition_location(desired.bucket, component)))
                .build()
        });
        let created = (clients.glue.batch_create_partition())
            .database_name(table.database)
            .table_name(table.table)
            .set_partition_input_list(Some(inputs.collect()))
            .send()
            .await
            .or_aws(|| format!("registering partitions of Glue table {}.{}", table.database, table.table))?;
        // Registered meanwhile by someone else: fine, the partition is there.
        let failed: Vec<String> = created
            .errors()
            .iter()
            .filter(|e| e.error_detail().and_then(|d| d.error_code()) != Some("AlreadyExistsException"))
            .map(|e| format!("{:?}", e.partition_values()))
            .collect();
        if !failed.is_empty() {
            let action = format!("registering partitions of Glue table {}.{}", table.database, table.table);
            return Err(AwsError::new(action, AwsErrorKind::Unavailable, None, format!("refused for {}", failed.join(", "))).into());
        }
        outcome.changed(format!(
            "registered partitions {} of Glue table {}.{}",
            chunk.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
            table.database,
            table.table
        ));
    }
    Ok(outcome)
}

/// Tables in the database, by name.
async fn tables_in(clients: &AwsClients, database: &str) -> Result<Vec<String>, Error> {
    let mut tables = Vec::new();
    let mut token = None;
    loop {
        let page = (clients.glue.get_tables())
            .database_name(database)
            .set_next_token(token)
            .send()
            .await
            .or_aws(|| format!("listing the tables of Glue database {database}"))?;
        tables.extend(page.table_list().iter().map(|table| table.name().to_owned()));
        token = page.next_token;
        if token.is_none() {
            return Ok(tables);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_database_tags_are_read_once_for_the_reconciles_that_follow() {
        let ours = r#"{"Database":{"Name":"p","CreateTime":1700000000,"Parameters":{"metrics.dev/pipeline":"team-a/p","metrics.dev/pipeline-uid":"u-1","metrics.dev/cluster":"c-1","app.kubernetes.io/managed-by":"metrics-pipeline-operator"}}}"#;
        let mut aws = crate::aws::fake::FakeAws::start(std::collections::BTreeMap::from([
            ("GetDatabase", (200, ours)),
            ("GetTags", (200, r#"{"Tags":{}}"#)),
        ]))
        .await;
        aws.clients.tags = std::sync::Arc::new(crate::aws::TagCache::new(std::time::Duration::from_secs(3600)));
        let database = GlueDatabase { name: "p", account_id: "123456789012" };
        for _ in 0..3 {
            let (_, outcome) = crate::aws::resource::ensure(&database, &aws.clients, &crate::aws::fake::owner(), &()).await.unwrap();
            assert!(outcome.changes.is_empty() && outcome.degraded.is_none(), "{outcome:?}");
        }
        assert_eq!(aws.called().iter().filter(|operation| *operation == "GetTags").count(), 1, "{:?}", aws.called());
    }

    fn spec(partitions: &PartitionConfig, format: DeliveryFormat) -> TableSpec<'_> {
        let owner = Box::leak(Box::new(crate::aws::fake::owner()));
        TableSpec { database: "p", table: "metric_aggregates", bucket: "p-bucket", format, partitions, owner }
    }

    #[test]
    fn the_json_table_reads_the_aggregate_with_the_openx_serde_partitioned_by_component() {
        let table = desired_table(&spec(&PartitionConfig::Registered, DeliveryFormat::Json));
        let storage = table.storage_descriptor().unwrap();
        assert_eq!(storage.location(), Some("s3://p-bucket/"));
        assert_eq!(storage.serde_info().unwrap().serialization_library(), Some("org.openx.data.jsonserde.JsonSerDe"));
        let names: Vec<&str> = storage.columns().iter().map(Column::name).collect();
        assert_eq!(
            names,
            [
                "metricName",
                "unit",
                "minValue",
                "maxValue",
                "avgValue",
                "count",
                "sum",
                "fromTimestamp",
                "toTimestamp",
                "windowStart",
                "windowEnd",
                "windowId",
                "revision"
            ]
        );
        assert_eq!(table.partition_keys().iter().map(Column::name).collect::<Vec<_>>(), ["componentname"]);
        assert_eq!(table.parameters().unwrap()["EXTERNAL"], "TRUE");
        assert!(!table.parameters().unwrap().contains_key("projection.enabled"));
    }

    #[test]
    fn projection_lists_the_components_and_templates_the_location() {
        let components = PartitionConfig::Projected(vec!["user-service".into(), "order-service".into()]);
        let table = desired_table(&spec(&components, DeliveryFormat::Json));
        let parameters = table.parameters().unwrap();
        assert_eq!(parameters["projection.enabled"], "true");
        // Keyed by the column's name as Athena spells it; the template maps it onto the prefix.
        assert_eq!(parameters["projection.componentname.type"], "enum");
        assert_eq!(parameters["projection.componentname.values"], "user-service,order-service");
        assert_eq!(parameters["storage.location.template"], "s3://p-bucket/componentName=${componentname}/");
        assert!(parameters.keys().filter(|key| key.starts_with("projection.")).all(|key| key.to_lowercase() == *key), "{parameters:?}");
    }

    #[test]
    fn registered_partitions_name_the_prefix_the_writers_use() {
        assert_eq!(partition_location("p-bucket", "user-service"), "s3://p-bucket/componentName=user-service/");
    }

    /// The table as Glue returns it for `input`.
    fn found(input: TableInput) -> Table {
        Table::builder()
            .name(input.name())
            .set_parameters(input.parameters().cloned())
            .set_storage_descriptor(input.storage_descriptor().cloned())
            .set_partition_keys(Some(input.partition_keys().to_vec()))
            .build()
            .unwrap()
    }

    #[test]
    fn a_table_as_desired_is_kept_and_one_with_other_settings_updated() {
        let registered = spec(&PartitionConfig::Registered, DeliveryFormat::Json);
        let desired = desired_table(&registered);
        assert_eq!(table_plan(None, &desired, DeliveryFormat::Json), TablePlan::Create);
        assert_eq!(table_plan(Some(&found(desired.clone())), &desired, DeliveryFormat::Json), TablePlan::Keep);
        let projected = PartitionConfig::Projected(vec!["a".into()]);
        let other = found(desired_table(&spec(&projected, DeliveryFormat::Json)));
        assert_eq!(table_plan(Some(&other), &desired, DeliveryFormat::Json), TablePlan::Update);
    }

    #[test]
    fn a_camel_case_partition_key_is_migrated_by_recreating_the_table() {
        let desired = desired_table(&spec(&PartitionConfig::Registered, DeliveryFormat::Json));
        let mut old = found(desired.clone());
        old.partition_keys = Some(vec![Column::builder().name("componentName").r#type("string").build().unwrap()]);
        assert_eq!(
            table_plan(Some(&old), &desired, DeliveryFormat::Json),
            TablePlan::Recreate("its partition keys are [componentName string], not [componentname string]".into())
        );
    }

    #[test]
    fn a_format_change_is_planned_as_such_and_compression_is_none() {
        let json = found(desired_table(&spec(&PartitionConfig::Registered, DeliveryFormat::Json)));
        let parquet = desired_table(&spec(&PartitionConfig::Registered, DeliveryFormat::Parquet));
        let change = TablePlan::ChangeFormat { from: DeliveryFormat::Json, to: DeliveryFormat::Parquet };
        assert_eq!(table_plan(Some(&json), &parquet, DeliveryFormat::Parquet), change);
        // With a camelCase key too, the format decides first: it may have to be refused.
        let mut old = json.clone();
        old.partition_keys = Some(vec![Column::builder().name("componentName").r#type("string").build().unwrap()]);
        assert_eq!(table_plan(Some(&old), &parquet, DeliveryFormat::Parquet), change);
    }

    #[test]
    fn a_refused_format_change_names_the_field_an_object_and_every_way_on() {
        let error = unsafe_format_change(DeliveryFormat::Json, DeliveryFormat::Parquet, "s3://b/componentName=a/x.gz");
        assert!(error.is_terminal());
        assert_eq!(error.reason(), "UnsafeChange");
        let message = error.to_string();
        assert!(message.starts_with("spec.delivery.format cannot change from Json to Parquet: the bucket holds Json objects"), "{message}");
        for way in
            ["s3://b/componentName=a/x.gz", "Set it back to Json", "deletionPolicy: Retain", "spec.namePrefix", "componentName= objects"]
        {
            assert!(message.contains(way), "{way}: {message}");
        }
    }

    #[test]
    fn parquet_tables_use_the_parquet_serde() {
        let table = desired_table(&spec(&PartitionConfig::Registered, DeliveryFormat::Parquet));
        let storage = table.storage_descriptor().unwrap();
        assert_eq!(
            storage.serde_info().unwrap().serialization_library(),
            Some("org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe")
        );
        assert_eq!(table.parameters().unwrap()["classification"], "parquet");
    }
}
