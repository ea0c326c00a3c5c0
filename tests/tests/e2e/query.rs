//! `scripts/query` over tables exactly as the operator catalogs them, with objects as the delivery
//! stand-in writes them: JSON lines (plain, gzip, Hadoop-snappy) with registered partitions,
//! Parquet with projected ones; what the catalog does not list is not read, and a record of the wrong type
//! fails the query, naming the object and the column.

use aws_sdk_firehose::types::CompressionFormat;
use aws_sdk_glue::types::{DatabaseInput, PartitionInput};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use metrics_pipeline_api::config::PartitionConfig;
use metrics_pipeline_api::pipeline::DeliveryFormat;
use metrics_pipeline_e2e::delivery::compress;
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::parquet::write_rows;
use metrics_pipeline_e2e::query::{Format, query, select};
use metrics_pipeline_operator::aws::catalog::{TableSpec, desired_table, partition_location, storage};
use metrics_pipeline_runtime::sdk::s3_client;
use serde_json::{Value, json};

/// A bucket, and a Glue database holding the operator's `metric_aggregates` table over it.
struct Pipeline {
    bucket: String,
    database: String,
    s3: aws_sdk_s3::Client,
    glue: aws_sdk_glue::Client,
}

impl Pipeline {
    async fn create(name: &str, format: DeliveryFormat, partitions: &PartitionConfig) -> Self {
        let sdk = emulator_sdk().await;
        let bucket = format!("query-{name}-{}", std::process::id());
        let database = bucket.replace('-', "_");
        let s3 = s3_client(&sdk);
        let region = sdk.region().unwrap().to_string();
        let location = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(region.as_str())).build();
        s3.create_bucket().bucket(&bucket).create_bucket_configuration(location).send().await.unwrap();
        let glue = aws_sdk_glue::Client::new(&sdk);
        glue.create_database().database_input(DatabaseInput::builder().name(&database).build().unwrap()).send().await.unwrap();
        let spec = TableSpec {
            database: &database,
            table: "metric_aggregates",
            bucket: &bucket,
            format,
            partitions,
            owner: &metrics_pipeline_e2e::table_owner("test/query"),
        };
        glue.create_table().database_name(&database).table_input(desired_table(&spec)).send().await.unwrap();
        Self { bucket, database, s3, glue }
    }

    async fn put(&self, key: &str, body: Vec<u8>) {
        self.s3.put_object().bucket(&self.bucket).key(key).body(body.into()).send().await.unwrap();
    }

    /// Registers `component`'s partition as the operator does.
    async fn register(&self, component: &str, format: DeliveryFormat) {
        let partition = PartitionInput::builder()
            .values(component)
            .storage_descriptor(storage(format, partition_location(&self.bucket, component)))
            .build();
        self.glue
            .create_partition()
            .database_name(&self.database)
            .table_name("metric_aggregates")
            .partition_input(partition)
            .send()
            .await
            .unwrap();
    }
}

fn aggregate(component: &str, metric: &str, min: f64) -> Value {
    json!({
        "componentName": component, "metricName": metric, "unit": "percent", "minValue": min, "maxValue": min + 10.0,
        "avgValue": min + 5.0, "count": 3, "sum": 3.0 * (min + 5.0), "fromTimestamp": "2021-09-09T11:30:00.001Z",
        "toTimestamp": "2021-09-09T11:30:59.999Z", "windowStart": "2021-09-09T11:30:00.000Z", "windowEnd": "2021-09-09T11:31:00.000Z",
        "windowId": format!("{component}-{metric}"), "revision": 0
    })
}

fn json_lines(records: &[Value]) -> Vec<u8> {
    records.iter().map(|record| format!("{record}\n")).collect::<String>().into_bytes()
}

#[tokio::test]
async fn json_objects_under_registered_partitions_read_as_athena_reads_them() {
    let pipeline = Pipeline::create("json", DeliveryFormat::Json, &PartitionConfig::Registered).await;
    let objects = [
        ("user-service", "cpu-usage", 1.5, CompressionFormat::Gzip),
        ("user-service", "ram-usage", 256.0, CompressionFormat::HadoopSnappy),
        ("order-service", "ram-usage", 512.0, CompressionFormat::Uncompressed),
    ];
    for (n, (component, metric, min, compression)) in objects.into_iter().enumerate() {
        let (body, extension) = compress(&compression, json_lines(&[aggregate(component, metric, min)])).unwrap();
        pipeline.put(&format!("componentName={component}/delivery-1-{n:04}{extension}"), body).await;
    }
    // Neither a registered partition nor visible to Hive: never read.
    pipeline.put("componentName=unregistered/delivery-1-0001", json_lines(&[aggregate("unregistered", "cpu-usage", 0.0)])).await;
    pipeline.put("componentName=user-service/_SUCCESS", b"not json".to_vec()).await;
    pipeline.put("_aggregator/checkpoint.json", b"{\"not\": \"an aggregate\"}".to_vec()).await;
    pipeline.register("user-service", DeliveryFormat::Json).await;
    pipeline.register("order-service", DeliveryFormat::Json).await;

    let sql = format!(
        "SELECT componentName, metricName, minValue, count, fromTimestamp, revision FROM {}.metric_aggregates ORDER BY componentName, metricName",
        pipeline.database
    );
    let table = query(&sql, Format::Table).await.unwrap();
    assert_eq!(
        table.lines().collect::<Vec<_>>(),
        [
            "componentname | metricname | minvalue | count | fromtimestamp           | revision",
            "--------------+------------+----------+-------+-------------------------+---------",
            "order-service | ram-usage  | 512.0    | 3     | 2021-09-09 11:30:00.001 | 0",
            "user-service  | cpu-usage  | 1.5      | 3     | 2021-09-09 11:30:00.001 | 0",
            "user-service  | ram-usage  | 256.0    | 3     | 2021-09-09 11:30:00.001 | 0",
        ],
        "{sql}\n{table}"
    );
    // The README's way to see a table's columns, as Glue gives them.
    let described = query(&format!("DESCRIBE {}.metric_aggregates", pipeline.database), Format::Csv).await.unwrap();
    let columns: Vec<String> = described.lines().map(|line| line.split(',').take(2).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        columns,
        [
            "column_name column_type",
            "metricname VARCHAR",
            "unit VARCHAR",
            "minvalue DOUBLE",
            "maxvalue DOUBLE",
            "avgvalue DOUBLE",
            "count BIGINT",
            "sum DOUBLE",
            "fromtimestamp TIMESTAMP",
            "totimestamp TIMESTAMP",
            "windowstart TIMESTAMP",
            "windowend TIMESTAMP",
            "windowid VARCHAR",
            "revision INTEGER",
            "componentname VARCHAR",
        ],
        "the Glue columns with their types, the partition column last:\n{described}"
    );
    let sql = format!(
        "SELECT componentName, count(*) AS windows, max(toTimestamp) AS last FROM {}.METRIC_AGGREGATES \
         WHERE toTimestamp > TIMESTAMP '2021-09-09 11:30:00' GROUP BY componentName ORDER BY windows DESC, componentName",
        pipeline.database
    );
    let rows = select(&sql).await.unwrap();
    assert_eq!(
        rows.into_iter().map(Value::Object).collect::<Vec<_>>(),
        [
            json!({"componentname": "user-service", "windows": 2, "last": "2021-09-09 11:30:59.999"}),
            json!({"componentname": "order-service", "windows": 1, "last": "2021-09-09 11:30:59.999"}),
        ]
    );
}

#[tokio::test]
async fn parquet_objects_under_projected_partitions_read_as_athena_reads_them() {
    let projected = PartitionConfig::Projected(vec!["user-service".into(), "order-service".into()]);
    let pipeline = Pipeline::create("parquet", DeliveryFormat::Parquet, &projected).await;
    let columns = desired_table(&TableSpec {
        database: &pipeline.database,
        table: "metric_aggregates",
        bucket: &pipeline.bucket,
        format: DeliveryFormat::Parquet,
        partitions: &projected,
        owner: &metrics_pipeline_e2e::table_owner("test/query"),
    })
    .storage_descriptor()
    .unwrap()
    .columns()
    .to_vec();
    let parquet = |records: &[Value]| {
        let records: Vec<_> = records.iter().map(|record| record.as_object().unwrap().clone()).collect();
        write_rows(&records, &columns, parquet::basic::Compression::SNAPPY).unwrap()
    };
    let user = [aggregate("user-service", "cpu-usage", 1.5), aggregate("user-service", "ram-usage", 256.0)];
    pipeline.put("componentName=user-service/delivery-1-0001.parquet", parquet(&user)).await;
    pipeline.put("componentName=order-service/part-0.parquet", parquet(&[aggregate("order-service", "cpu-usage", 7.0)])).await;
    // Not among the projected values: Athena never looks there.
    pipeline.put("componentName=payment-service/part-0.parquet", parquet(&[aggregate("payment-service", "cpu-usage", 0.0)])).await;

    let sql = format!(
        "SELECT componentName, metricName, minValue, windowEnd FROM {}.metric_aggregates ORDER BY componentName, metricName",
        pipeline.database
    );
    let table = query(&sql, Format::Table).await.unwrap();
    assert_eq!(
        table.lines().skip(2).collect::<Vec<_>>(),
        [
            "order-service | cpu-usage  | 7.0      | 2021-09-09 11:31:00.000",
            "user-service  | cpu-usage  | 1.5      | 2021-09-09 11:31:00.000",
            "user-service  | ram-usage  | 256.0    | 2021-09-09 11:31:00.000",
        ],
        "{sql}\n{table}"
    );
}

#[tokio::test]
async fn a_record_of_the_wrong_type_fails_the_query_naming_the_object_and_the_column() {
    let pipeline = Pipeline::create("wrong", DeliveryFormat::Json, &PartitionConfig::Registered).await;
    let mut wrong = aggregate("user-service", "cpu-usage", 0.0);
    wrong["minValue"] = json!("lots");
    let records = [aggregate("user-service", "ram-usage", 1.0), wrong];
    pipeline.put("componentName=user-service/delivery-1-0001", json_lines(&records)).await;
    pipeline.register("user-service", DeliveryFormat::Json).await;

    let table = format!("{}.metric_aggregates", pipeline.database);
    let error = query(&format!("SELECT avg(minValue) FROM {table}"), Format::Table).await.unwrap_err().to_string();
    let object = format!("s3://{}/componentName=user-service/delivery-1-0001", pipeline.bucket);
    assert_eq!(error, format!("scripts/query: {object}: column minvalue (double) cannot hold \"lots\""));
    let error = query(&format!("SELECT fromTimestamp FROM {table}"), Format::Table).await;
    assert!(error.is_ok(), "as in Athena, only a query that reads the column fails: {error:?}");
}

#[tokio::test]
async fn a_parquet_column_stored_with_another_type_fails_the_query() {
    let pipeline = Pipeline::create("stored", DeliveryFormat::Parquet, &PartitionConfig::Registered).await;
    let as_text = [aws_sdk_glue::types::Column::builder().name("minValue").r#type("string").build().unwrap()];
    let record = json!({"minValue": "1.5"}).as_object().unwrap().clone();
    pipeline
        .put("componentName=user-service/part-0.parquet", write_rows(&[record], &as_text, parquet::basic::Compression::SNAPPY).unwrap())
        .await;
    pipeline.register("user-service", DeliveryFormat::Parquet).await;

    let error = query(&format!("SELECT * FROM {}.metric_aggregates", pipeline.database), Format::Table).await.unwrap_err().to_string();
    let object = format!("s3://{}/componentName=user-service/part-0.parquet", pipeline.bucket);
    assert_eq!(error, format!("scripts/query: {object}: column minvalue (double) is stored as VARCHAR"));
}

#[tokio::test]
async fn a_line_the_openx_serde_refuses_fails_the_query_naming_the_object() {
    let pipeline = Pipeline::create("refused", DeliveryFormat::Json, &PartitionConfig::Registered).await;
    pipeline.register("user-service", DeliveryFormat::Json).await;
    let object = format!("s3://{}/componentName=user-service/delivery-1-0001", pipeline.bucket);
    let refused = [
        (
            r#"{"metricName":"cpu-usage","minValue":1.0,"MINVALUE":2.0}"#,
            r#"a key twice, in the same or another case (the OpenX SerDe's `Duplicate key`): {"metricName":"cpu-usage","minValue":1.0,"MINVALUE":2.0}"#,
        ),
        (r#"{"metricName":"cpu-usage","count":1.5}"#, "column count (bigint) cannot hold 1.5"),
        (r#"{"metricName":"cpu-usage","minValue":true}"#, "column minvalue (double) cannot hold true"),
        (r#"{"metricName":"cpu-usage","fromTimestamp":"yesterday"}"#, r#"column fromtimestamp (timestamp) cannot hold "yesterday""#),
        (r#"["cpu-usage",1.0]"#, r#"a line that is not a JSON object: ["cpu-usage",1.0]"#),
    ];
    for (line, reason) in refused {
        pipeline.put("componentName=user-service/delivery-1-0001", format!("{line}\n").into_bytes()).await;
        let error = query(&format!("SELECT * FROM {}.metric_aggregates", pipeline.database), Format::Table).await.unwrap_err();
        assert_eq!(error.to_string(), format!("scripts/query: {object}: {reason}"));
    }
}
