//! Proves the test harness: the real AWS SDK clients reach the moto server that
//! `cargo xtask test` started (EC2 DescribeInstanceTypes; SQS send, receive, delete).

mod common;

use aws_sdk_ec2::types::InstanceType;

#[tokio::test]
async fn ec2_describe_instance_types_through_moto() {
    let config = common::moto_config("us-east-1").await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let out = ec2
        .describe_instance_types()
        .instance_types(InstanceType::M5Large)
        .instance_types(InstanceType::C5Xlarge)
        .send()
        .await
        .expect("DescribeInstanceTypes against moto");
    let mut types: Vec<(String, i32, i64)> = out
        .instance_types()
        .iter()
        .map(|t| {
            (
                t.instance_type()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default(),
                t.v_cpu_info()
                    .and_then(|v| v.default_v_cpus())
                    .unwrap_or_default(),
                t.memory_info().and_then(|m| m.size_in_mib()).unwrap_or_default(),
            )
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        vec![
            ("c5.xlarge".to_owned(), 4, 8192),
            ("m5.large".to_owned(), 2, 8192)
        ]
    );

    let err = ec2
        .describe_instance_types()
        .instance_types(InstanceType::from("zz9.huge"))
        .send()
        .await;
    assert!(err.is_err(), "an unknown instance type must be rejected");
}

#[tokio::test]
async fn sqs_send_receive_delete_through_moto() {
    let config = common::moto_config("us-east-1").await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue = sqs
        .create_queue()
        .queue_name(common::unique("harness"))
        .send()
        .await
        .expect("CreateQueue");
    let url = queue.queue_url().expect("queue url").to_owned();

    sqs.send_message()
        .queue_url(&url)
        .message_body(r#"{"hello":"spot"}"#)
        .send()
        .await
        .expect("SendMessage");
    let received = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("ReceiveMessage");
    let messages = received.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body(), Some(r#"{"hello":"spot"}"#));

    let handle = messages[0].receipt_handle().expect("receipt handle");
    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(handle)
        .send()
        .await
        .expect("DeleteMessage");
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes");
    let visible = attrs
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages));
    let invisible = attrs
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible));
    assert_eq!(
        (visible.map(String::as_str), invisible.map(String::as_str)),
        (Some("0"), Some("0"))
    );
}
